// --self-test: build every §14 vector of docs/protocol.md with this package's encoder and keys, and
// compare byte for byte with the hex blocks read from the document itself.
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import {
  KIND_DATA, KIND_MESSAGE, base58decode, decode, encode, encodeMessage, f64, frame, hex, jobId, jobIdPreimage,
  messageFrame, openSigned, peerIdBytes, peerIdFromPublicKey, sha256, sign, textToImageSpec, unhex
} from './codec.mjs'

const DOC = fileURLToPath(new URL('../../../docs/protocol.md', import.meta.url))

export function docVectors (path = DOC) {
  const text = readFileSync(path, 'utf8')
  const out = {}
  for (const m of text.matchAll(/```hex vector:(\w+)\n([\s\S]*?)```/g)) {
    const bytes = m[2].split('\n').map(l => l.split('#')[0]).join(' ')
    out[m[1]] = unhex(bytes)
  }
  return out
}

const seq = (from, n) => Uint8Array.from({ length: n }, (_, i) => from + i)

export async function selfTest () {
  const vectors = docVectors()
  const results = []
  const check = (name, got) => {
    const want = vectors[name]
    const ok = want !== undefined && Buffer.compare(Buffer.from(got), Buffer.from(want)) === 0
    let firstDiff = null
    if (!ok && want) { for (let i = 0; i < Math.max(got.length, want.length); i++) if (got[i] !== want[i]) { firstDiff = i; break } }
    results.push({ vector: name, ok, bytes: got.length, ...(ok ? {} : { want_bytes: want?.length ?? null, first_diff: firstDiff }) })
  }

  const worker = await generateKeyPairFromSeed('Ed25519', new Uint8Array(32).fill(0x11))
  const requester = await generateKeyPairFromSeed('Ed25519', new Uint8Array(32).fill(0x22))
  const workerId = peerIdFromPublicKey(worker.publicKey.raw)
  const requesterId = peerIdFromPublicKey(requester.publicKey.raw)
  const extra = []
  extra.push({ what: 'identity public key', ok: hex(worker.publicKey.raw) === 'd04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737' })
  extra.push({ what: 'worker peer id', ok: workerId === '12D3KooWPqT2nMDSiXUSx5D7fasaxhxKigVhcqfkKqrLghCq9jxz' && workerId === worker.publicKey.toString() })
  extra.push({ what: 'requester peer id', ok: requesterId === '12D3KooWLdJAwPtyQ5RFnr9wGXsQzpf3P2SeqFbYkqbfVehLu4Ns' })
  extra.push({ what: 'base58 round trip', ok: hex(base58decode(workerId)) === hex(peerIdBytes(worker.publicKey.raw)) })
  check('identity', peerIdBytes(worker.publicKey.raw))

  const nonce = seq(0, 16)
  const spec = textToImageSpec({ prompt: 'a lighthouse at dusk', width: 64, height: 64, steps: 2, seed: 42, modelId: 'tiny-sdxl' })
  check('job_id', jobIdPreimage(spec, requesterId, nonce))
  const id = jobId(spec, requesterId, nonce)
  extra.push({ what: 'job id', ok: id === 'd5a78e0273edea484ea57442026ab438267d6b17a697c179e09ef7134b102da3' })

  check('quote_request', messageFrame('job_quote_request', {
    spec, nonce, max_price: 1000000, deadline_ms: 60000, accept: true, input_shape: null
  }))

  const T0 = 1800000000000
  const quote = {
    quote_id: '1a3185c5000-1',
    job_id: id,
    worker_peer_id: workerId,
    price: 41,
    eta_ms: 1200,
    warm: true,
    model_id: 'tiny-sdxl',
    weights_sha256: '063d6116d1889cefce739ce44e99d29826c2a226fd5f1406778593a1238d8249',
    issued_at_ms: T0,
    expires_at_ms: T0 + 15000
  }
  const signedQuote = await sign(worker, 'job_quote', quote)
  check('signed_quote', frame(KIND_MESSAGE, signedQuote))
  const opened = await openSigned(signedQuote, 'job_quote')
  extra.push({ what: 'signed_quote verifies', ok: opened.signer === workerId && opened.body.price === 41 })

  check('progress', messageFrame('job_progress', { job_id: id, stage: 'denoise', step: 1, total: 2, elapsed_ms: 350 }))

  const png = Buffer.from('89504e470d0a1a0a6c706e6f646520766563746f72206f7574707574', 'hex')
  const receipt = {
    job_id: id,
    requester_peer_id: requesterId,
    worker_peer_id: workerId,
    nonce,
    spec,
    quote_id: '1a3185c5000-1',
    price: 41,
    model_id: 'tiny-sdxl',
    weights_sha256: '063d6116d1889cefce739ce44e99d29826c2a226fd5f1406778593a1238d8249',
    runtime: { device: 'cpu', dtype: 'float32', libraries: [{ name: 'torch', version: '2.13.0' }, { name: 'diffusers', version: '0.42.1' }] },
    outputs: [{
      name: 'image',
      media_type: 'image/png',
      size_bytes: png.length,
      sha256: hex(sha256(png)),
      pixel_sha256: 'dfe2378190644ea15c7a47276454699a19af78255ad2232761f3950bf350a745',
      phash: ['c3c3e1e1f0f0781c'],
      dhash: ['0f0f1e1e3c3c7878']
    }],
    timings: { queue_ms: 0, load_ms: 0, run_ms: 812 },
    seq: 1800000000000001,
    issued_at_ms: T0 + 2000
  }
  const signedReceipt = await sign(worker, 'receipt', receipt)
  check('receipt', signedReceipt)
  const openedReceipt = await openSigned(signedReceipt, 'receipt')
  extra.push({ what: 'receipt verifies and binds its job id', ok: jobId(openedReceipt.body.spec, openedReceipt.body.requester_peer_id, openedReceipt.body.nonce) === openedReceipt.body.job_id })

  const outputDesc = { name: 'image', media_type: 'image/png', size_bytes: png.length, sha256: hex(sha256(png)) }
  check('result', Buffer.concat([
    messageFrame('job_result', { job_id: id, outputs: [outputDesc], receipt: signedReceipt }),
    messageFrame('transfer_header', { total_bytes: png.length, sha256: sha256(png), media_type: 'image/png', chunk_bytes: 262144 }),
    frame(KIND_DATA, png),
    frame(KIND_DATA, new Uint8Array(0))
  ]))

  const input = Buffer.from('89504e470d0a1a0a6c706e6f646520766563746f7220696e707574', 'hex')
  const inputDesc = { name: 'image', media_type: 'image/png', size_bytes: input.length, sha256: hex(sha256(input)) }
  const upscaleSpec = {
    pipeline: 'upscale',
    model_id: '',
    seed: 0,
    inputs: [inputDesc],
    output: { media_type: 'image/png', max_total_bytes: 67108864 },
    text_to_image: null,
    image_to_image: null,
    image_to_video: null,
    upscale: { scale: 2, input_width: 32, input_height: 32, input_frames: 1 },
    frame_interpolation: null
  }
  const upNonce = seq(0x10, 16)
  check('upscale_request', messageFrame('job_quote_request', {
    spec: upscaleSpec, nonce: upNonce, max_price: 1000000, deadline_ms: 60000, accept: false, input_shape: null
  }))
  const upId = jobId(upscaleSpec, requesterId, upNonce)
  check('accept_and_input', Buffer.concat([
    messageFrame('job_accept', { quote_id: '1a3185c5000-2', job_id: upId, inputs: [inputDesc] }),
    messageFrame('transfer_header', { total_bytes: input.length, sha256: sha256(input), media_type: 'image/png', chunk_bytes: 262144 }),
    frame(KIND_DATA, input),
    frame(KIND_DATA, new Uint8Array(0))
  ]))
  check('refusal', messageFrame('job_refusal', { job_id: upId, reason: 'busy', message: '4 jobs held', retry_after_ms: 1200 }))
  check('job_error', messageFrame('job_error', { job_id: id, code: 'deadline_exceeded', message: 'deadline passed' }))
  check('cancel', messageFrame('job_cancel', { job_id: id, reason: 'user' }))

  const advert = {
    peer_id: workerId,
    seq: T0,
    issued_at_ms: T0,
    expires_at_ms: T0 + 30000,
    listen_addrs: [`/ip4/192.0.2.7/tcp/9471/p2p/${workerId}`],
    software_version: '0.1.0',
    protocol_version: 1,
    gpus: [{ name: 'cpu', kind: 'cpu', vram_total_bytes: 0, vram_free_bytes: 0 }],
    models: [{
      pipeline: 'text-to-image',
      model_id: 'tiny-sdxl',
      weights_sha256: '063d6116d1889cefce739ce44e99d29826c2a226fd5f1406778593a1238d8249',
      warm: true,
      speed_mpx_steps_per_s: f64(12.5),
      price_per_mpx_step: 100,
      limits: { max_pixels: 65536, max_side: 256, max_steps: 50, max_frames: 1, max_batch: 4, max_total_pixels: 0 }
    }],
    queue_depth: 0,
    queue_capacity: 4,
    job_features: []
  }
  check('advert', await sign(worker, 'advert', advert))

  // the decoder against the encoder: every vector's msgpack decodes and re-encodes to the same bytes
  const roundTrip = decode(encodeMessage('job_quote_request', { spec, nonce, max_price: 1000000, deadline_ms: 60000, accept: true, input_shape: null }))
  extra.push({ what: 'decode/encode round trip', ok: Buffer.compare(encode(roundTrip), encodeMessage('job_quote_request', { spec, nonce, max_price: 1000000, deadline_ms: 60000, accept: true, input_shape: null })) === 0 })

  const missing = Object.keys(vectors).filter(n => !results.some(r => r.vector === n))
  const ok = results.every(r => r.ok) && extra.every(e => e.ok) && missing.length === 0
  return { ok, vectors: results, checks: extra, untested_vectors: missing }
}
