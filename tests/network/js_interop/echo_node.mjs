// A js-libp2p 2.x node (TCP + Noise + @chainsafe/libp2p-yamux) for tests/network/test_js_interop.py.
//
// It serves /lpnode/echo/1: a 4-byte big-endian length, that many bytes, echoed back, then the stream
// is closed. It prints {"addr": "<multiaddr>/p2p/<id>"} on start, then for every JSON line on stdin
// {"dial": "<multiaddr>", "bytes": N} it runs the same echo against that node and prints {"ok": bool, ...}.
import readline from 'node:readline'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { multiaddr } from '@multiformats/multiaddr'

if (!Promise.withResolvers) { // Node 20: libp2p 2.x expects it (design notes)
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const PROTOCOL = '/lpnode/echo/1'

async function readExactly (source, wanted, held) {
  // held: { chunks: Uint8Array[], length: number } carried across calls
  while (held.length < wanted) {
    const { value, done } = await source.next()
    if (done) throw new Error(`stream ended after ${held.length} of ${wanted} bytes`)
    const bytes = value.subarray()
    held.chunks.push(bytes)
    held.length += bytes.length
  }
  const all = Buffer.concat(held.chunks.map(c => Buffer.from(c)))
  held.chunks = [all.subarray(wanted)]
  held.length = all.length - wanted
  return all.subarray(0, wanted)
}

function pattern (n) {
  const out = Buffer.alloc(n)
  for (let i = 0; i < n; i++) out[i] = i % 251
  return out
}

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify() }
})

await node.handle(PROTOCOL, async ({ stream }) => {
  const source = stream.source[Symbol.asyncIterator]()
  const held = { chunks: [], length: 0 }
  const header = await readExactly(source, 4, held)
  const body = await readExactly(source, header.readUInt32BE(0), held)
  await stream.sink([body])
  await stream.close()
})

console.log(JSON.stringify({ addr: node.getMultiaddrs()[0].toString() }))

for await (const line of readline.createInterface({ input: process.stdin })) {
  if (!line.trim()) continue
  const { dial, bytes } = JSON.parse(line)
  try {
    const stream = await node.dialProtocol(multiaddr(dial), PROTOCOL)
    const header = Buffer.alloc(4)
    header.writeUInt32BE(bytes, 0)
    const payload = pattern(bytes)
    const source = stream.source[Symbol.asyncIterator]()
    const sending = stream.sink([header, payload])
    const echoed = await readExactly(source, bytes, { chunks: [], length: 0 })
    await sending
    await stream.close()
    console.log(JSON.stringify({ ok: Buffer.compare(echoed, payload) === 0, received: echoed.length }))
  } catch (err) {
    console.log(JSON.stringify({ ok: false, error: String(err) }))
  }
}
await node.stop()
