#!/usr/bin/env node
// An independent lpnode requester in JavaScript, written from docs/protocol.md (and README.md) alone.
//
//   node requester.mjs --self-test
//   node requester.mjs --addr /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... --prompt "a lighthouse" \
//        --width 64 --height 64 --steps 2 --seed 42 --max-price 1000 --model lpnode/tiny-sdxl --out out.png
//   node requester.mjs --addr ... --mode forged-signature|garbage|garbage-kind|oversized-frame|
//        oversized-message|unknown-model|absurd-params|too-large|disconnect-after-accept|silent-stream|
//        cancel-mid-run [--rpc URL --token T]
//
// Prints one JSON line. Happy path: {"ok": true, "worker", "price", "receipt": {...}, "output": {...}, "timings": {...}}.
// Bad-peer modes: {"ok": <lpnode answered as the doc says>, "mode", "sent", "expected", "answer": {...}}.
import { parseArgs } from 'node:util'
import { writeFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { multiaddr } from '@multiformats/multiaddr'
import { generateKeyPair } from '@libp2p/crypto/keys'
import {
  KIND_DATA, KIND_MESSAGE, MAX_JOB_FRAME_BYTES, deepEqual, encodeMessage, frame, hex, isHex64, jobId, messageFrame, normaliseSpec, openSigned, peerIdFromPublicKey, sha256, textToImageSpec, toJSON
} from './codec.mjs'
import { BadFrame, FrameTimeout, JOB_PROTOCOL, JobStream, StreamEnded } from './jobstream.mjs'
import { checkPng } from './png.mjs'

if (!Promise.withResolvers) { // Node 20: libp2p 2.x expects it
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const QUOTE_WAIT_MS = 10000 // §8.8: a Quote or Refusal
const SILENCE_MS = 60000 // §8.8: any message once accepted
const MAX_CHUNK = 1048576 // §9: the reference takes chunks up to 1 MiB; so do we

class JobFailed extends Error {
  constructor (phase, message, extra = {}) { super(message); this.phase = phase; this.extra = extra }
}

// ------------------------------------------------------------------ node

async function startNode ({ withPing = true } = {}) {
  // §2: the reference node pings its peers every 3 s (/ipfs/ping/1.0.0) as a health check
  const privateKey = await generateKeyPair('Ed25519')
  const node = await createLibp2p({
    privateKey,
    addresses: { listen: [] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: withPing ? { identify: identify(), ping: ping() } : { identify: identify() }
  })
  const peerId = peerIdFromPublicKey(privateKey.publicKey.raw)
  if (peerId !== node.peerId.toString()) throw new Error(`our peer id ${peerId} is not libp2p's ${node.peerId}`)
  return { node, peerId }
}

async function openJobStream (node, addr) {
  const ma = multiaddr(addr)
  const workerId = ma.getPeerId()
  if (!workerId) throw new JobFailed('dial', `${addr} names no /p2p/<peer id>`)
  const t = Date.now()
  const stream = await node.dialProtocol(ma, JOB_PROTOCOL, { signal: AbortSignal.timeout(10000) })
  const conn = node.getConnections().find(c => c.remotePeer.toString() === workerId)
  const remote = conn?.remotePeer.toString() ?? workerId // Noise authenticated it: dialing /p2p/<id> fails otherwise
  return { js: new JobStream(stream), workerId: remote, dialMs: Date.now() - t }
}

// ------------------------------------------------------------------ the job (§8.1 / §8.2)

function buildRequest (opts, spec) {
  return {
    spec,
    nonce: new Uint8Array(randomBytes(16)),
    max_price: opts.maxPrice,
    deadline_ms: opts.deadlineMs,
    accept: opts.acceptInAdvance,
    input_shape: null
  }
}

function checkQuote (q, { signer, workerId, id, request }) {
  const problems = []
  if (signer !== workerId) problems.push(`signed by ${signer}, not the stream's peer ${workerId}`)
  if (q.worker_peer_id !== workerId) problems.push(`worker_peer_id ${q.worker_peer_id} is not the stream's peer`)
  if (q.job_id !== id) problems.push(`quote for job ${q.job_id}, ours is ${id}`)
  if (!(Number(q.price) <= request.max_price)) problems.push(`price ${q.price} over max_price ${request.max_price}`)
  if (request.spec.model_id !== '' && q.model_id !== request.spec.model_id) problems.push(`model ${q.model_id}, asked ${request.spec.model_id}`)
  if (typeof q.quote_id !== 'string' || q.quote_id === '' || q.quote_id.length > 64) problems.push('bad quote_id')
  if (!isHex64(q.weights_sha256)) problems.push('weights_sha256 not hex64')
  const life = Number(q.expires_at_ms) - Number(q.issued_at_ms)
  if (!(life >= 1 && life <= 86400000)) problems.push(`quote life ${life} ms out of 1..86400000`)
  if (typeof q.warm !== 'boolean') problems.push('warm not a bool')
  return problems
}

/** §10.2 + §10.3 + what the brief asks: the receipt binds job id, requester, nonce, seed and every parameter. */
async function checkReceipt (receiptBytes, { workerId, peerId, id, request, quote, result }) {
  const problems = []
  if (!(receiptBytes instanceof Uint8Array) || receiptBytes.length > 262144) throw new JobFailed('result', 'receipt missing or over 262,144 bytes')
  let opened
  try { opened = await openSigned(receiptBytes, 'receipt') } catch (err) { throw new JobFailed('result', `receipt does not verify: ${err.message}`) }
  const r = opened.body
  if (opened.signer !== r.worker_peer_id) problems.push('signer is not worker_peer_id')
  if (r.worker_peer_id !== workerId) problems.push(`receipt worker ${r.worker_peer_id} is not the stream's peer`)
  const recomputed = jobId(r.spec, r.requester_peer_id, r.nonce)
  if (recomputed !== r.job_id) problems.push(`job id ${r.job_id} is not the hash of its spec/requester/nonce (${recomputed})`)
  if (r.job_id !== id) problems.push(`receipt for job ${r.job_id}, ours is ${id}`)
  if (r.requester_peer_id !== peerId) problems.push(`receipt names requester ${r.requester_peer_id}, we are ${peerId}`)
  if (!deepEqual(r.nonce, request.nonce)) problems.push('receipt nonce is not ours')
  if (!deepEqual(normaliseSpec(r.spec), normaliseSpec(request.spec))) problems.push('receipt spec differs from the one we sent')
  if (r.spec.seed !== request.spec.seed) problems.push(`seed ${r.spec.seed}, asked ${request.spec.seed}`)
  for (const k of ['quote_id', 'price', 'model_id', 'weights_sha256']) if (!deepEqual(r[k], quote[k])) problems.push(`receipt ${k} ${r[k]} is not the quote's ${quote[k]}`)
  const outs = result.outputs
  if (!Array.isArray(outs) || outs.length < 1 || outs.length > 16) problems.push('Result.outputs not 1..16')
  else if (!Array.isArray(r.outputs) || r.outputs.length !== outs.length) problems.push('receipt outputs differ in number from the Result')
  else {
    let total = 0
    outs.forEach((d, i) => {
      const o = r.outputs[i]
      for (const k of ['name', 'media_type', 'size_bytes', 'sha256']) if (!deepEqual(o[k], d[k])) problems.push(`output ${i} ${k}: receipt ${o[k]}, Result ${d[k]}`)
      if (d.media_type !== request.spec.output.media_type) problems.push(`output ${i} is ${d.media_type}`)
      if (!isHex64(o.sha256)) problems.push(`output ${i} sha256 not hex64`)
      total += Number(d.size_bytes)
    })
    if (total > request.spec.output.max_total_bytes) problems.push(`outputs total ${total} over max_total_bytes`)
  }
  if (problems.length) throw new JobFailed('result', `receipt rejected: ${problems.join('; ')}`)
  return { receipt: r, payload: opened.payload }
}

async function readTransfer (js, expected) {
  // §9: header (≤ 512), checked against the receipt's entry before any chunk is read
  const { tag, body: h } = await js.readMessage(512, SILENCE_MS, 'transfer_header')
  void tag
  if (!(h.sha256 instanceof Uint8Array) || h.sha256.length !== 32) throw new JobFailed('output', 'transfer header sha256 is not 32 raw bytes')
  if (hex(h.sha256) !== expected.sha256) throw new JobFailed('output', `transfer sha256 ${hex(h.sha256)} is not the receipt's ${expected.sha256}`)
  if (h.total_bytes !== expected.size_bytes) throw new JobFailed('output', `transfer of ${h.total_bytes} bytes, receipt says ${expected.size_bytes}`)
  if (h.media_type !== expected.media_type) throw new JobFailed('output', `transfer media type ${h.media_type}, receipt ${expected.media_type}`)
  if (!Number.isInteger(h.chunk_bytes) || h.chunk_bytes < 4096 || h.chunk_bytes > MAX_CHUNK) throw new JobFailed('output', `chunk_bytes ${h.chunk_bytes} out of 4096..${MAX_CHUNK}`)
  const parts = []
  let got = 0
  while (got < h.total_bytes) {
    const due = Math.min(h.chunk_bytes, h.total_bytes - got)
    const f = await js.readFrame(due, SILENCE_MS)
    if (f.kind !== KIND_DATA || f.body.length !== due) throw new JobFailed('output', `a chunk of ${f.body.length} bytes (kind ${f.kind}) where ${due} were due`)
    parts.push(f.body)
    got += due
  }
  const end = await js.readFrame(0, SILENCE_MS)
  if (end.kind !== KIND_DATA || end.body.length !== 0) throw new JobFailed('output', 'no end mark after the chunks')
  const bytes = Buffer.concat(parts)
  const digest = hex(sha256(bytes))
  if (digest !== expected.sha256) throw new JobFailed('output', `output hashes to ${digest}, receipt says ${expected.sha256}`)
  return { bytes, chunkBytes: h.chunk_bytes, chunks: parts.length }
}

async function runJob (node, peerId, opts, { stopAfterAccept = false } = {}) {
  const timings = {}
  const t0 = Date.now()
  const { js, workerId, dialMs } = await openJobStream(node, opts.addr)
  timings.dial_ms = dialMs
  const spec = textToImageSpec({ prompt: opts.prompt, width: opts.width, height: opts.height, steps: opts.steps, seed: opts.seed, modelId: opts.model, guidance: opts.guidance })
  const request = buildRequest(opts, spec)
  const id = jobId(spec, peerId, request.nonce)
  const cancel = async (reason) => { try { js.send('job_cancel', { job_id: id, reason }); await new Promise(resolve => setTimeout(resolve, 1000)); await js.close() } catch {} }
  try {
    const tReq = Date.now()
    js.send('job_quote_request', request)
    // the quote, a refusal or an error, within 10 s
    let m
    try { m = await js.readMessage(MAX_JOB_FRAME_BYTES, QUOTE_WAIT_MS, ['signed', 'job_refusal', 'job_error']) } catch (err) { throw new JobFailed('quote', `no quote: ${err.message}`) }
    timings.quote_ms = Date.now() - tReq
    if (m.tag === 'job_refusal') { await js.close(); throw new JobFailed('quote', `refused: ${m.body.reason}`, { refusal: toJSON(m.body) }) }
    if (m.tag === 'job_error') { await js.close(); throw new JobFailed('quote', `job error: ${m.body.code}`, { job_error: toJSON(m.body) }) }
    let quoted
    try { quoted = await openSigned(m.raw, 'job_quote', m.body) } catch (err) { await cancel('protocol_violation'); throw new JobFailed('quote', `quote rejected: ${err.message}`) }
    const quote = quoted.body
    const quoteArrived = Date.now()
    const problems = checkQuote(quote, { signer: quoted.signer, workerId, id, request })
    if (problems.length) { await cancel('protocol_violation'); throw new JobFailed('quote', `quote rejected: ${problems.join('; ')}`) }
    if (opts.acceptDelayMs > 0) await new Promise(resolve => setTimeout(resolve, opts.acceptDelayMs)) // a requester weighing quotes
    const tAccept = Date.now()
    if (!opts.acceptInAdvance) {
      const life = Number(quote.expires_at_ms) - Number(quote.issued_at_ms)
      if (Date.now() - quoteArrived >= life) { await cancel('quote_expired'); throw new JobFailed('accept', 'quote expired before we accepted') }
      js.send('job_accept', { quote_id: quote.quote_id, job_id: id, inputs: [] })
    }
    if (stopAfterAccept) return { js, id, quote, workerId }
    // progress, then the result (or an error)
    const progress = []
    let result
    const deadline = t0 + opts.deadlineMs
    for (;;) {
      const wait = Math.min(SILENCE_MS, deadline - Date.now())
      if (wait <= 0) { await cancel('deadline'); throw new JobFailed('run', 'deadline passed') }
      let msg
      try { msg = await js.readMessage(MAX_JOB_FRAME_BYTES, wait, ['job_progress', 'job_result', 'job_error']) } catch (err) {
        if (err instanceof FrameTimeout) { await cancel('deadline'); throw new JobFailed('run', `silence: ${err.message}`) }
        if (!(err instanceof StreamEnded) && !(err instanceof BadFrame)) await cancel('protocol_violation')
        throw new JobFailed('run', `while waiting for the result: ${err.message}`)
      }
      if (msg.tag === 'job_error') {
        await js.close()
        if (msg.body.job_id !== id && msg.body.job_id !== '') throw new JobFailed('run', `a JobError naming job ${msg.body.job_id}`)
        throw new JobFailed('run', `job error: ${msg.body.code}: ${msg.body.message}`, { job_error: toJSON(msg.body) })
      }
      if (msg.body.job_id !== id) { await cancel('protocol_violation'); throw new JobFailed('run', `${msg.tag} names job ${msg.body.job_id}`) }
      if (msg.tag === 'job_progress') { progress.push({ stage: msg.body.stage, step: msg.body.step, total: msg.body.total, elapsed_ms: msg.body.elapsed_ms }); continue }
      result = msg.body
      break
    }
    timings.run_ms = Date.now() - tAccept
    let checked
    try { checked = await checkReceipt(result.receipt, { workerId, peerId, id, request, quote, result }) } catch (err) { await cancel('protocol_violation'); throw err }
    const tOut = Date.now()
    const outputs = []
    for (const [i, entry] of checked.receipt.outputs.entries()) {
      let got
      try { got = await readTransfer(js, entry) } catch (err) { js.reset(); throw err instanceof JobFailed ? err : new JobFailed('output', `output ${i}: ${err.message}`) }
      outputs.push({ ...got, entry })
    }
    timings.transfer_ms = Date.now() - tOut
    await js.close()
    timings.total_ms = Date.now() - t0
    return { workerId, id, request, quote, receipt: checked.receipt, receiptBytes: result.receipt, outputs, progress, timings }
  } catch (err) {
    if (!(err instanceof JobFailed)) { js.reset(); throw new JobFailed('stream', err.message ?? String(err)) }
    throw err
  }
}

// ------------------------------------------------------------------ bad-peer probes

/** Reads what the worker answers after we sent something: a message, a reset/end, or silence. */
async function readAnswer (js, waitMs) {
  const t = Date.now()
  try {
    const m = await js.readMessage(MAX_JOB_FRAME_BYTES, waitMs)
    return { answer: m.tag, body: toJSON(m.tag === 'signed' ? (await openSigned(m.raw, 'job_quote', m.body)).body : m.body), after_ms: Date.now() - t }
  } catch (err) {
    if (err instanceof FrameTimeout) return { answer: 'silence', after_ms: Date.now() - t }
    if (err instanceof StreamEnded) return { answer: 'stream_ended', detail: err.message, after_ms: Date.now() - t }
    return { answer: 'bad_frame', detail: err.message, after_ms: Date.now() - t }
  }
}

/** After the worker's answer: does it keep the stream open for our close (§8.6), or end it first? */
async function afterAnswer (js, waitMs = 3000) {
  const t = Date.now()
  try {
    const f = await js.readFrame(MAX_JOB_FRAME_BYTES, waitMs)
    return { then: 'another_frame', kind: f.kind, then_after_ms: Date.now() - t }
  } catch (err) {
    if (err instanceof FrameTimeout) return { then: 'waits_for_our_close', then_after_ms: Date.now() - t }
    return { then: 'stream_ended', detail: err.message, then_after_ms: Date.now() - t }
  }
}

async function probe (node, peerId, opts, bytes, waitMs = 15000) {
  const { js } = await openJobStream(node, opts.addr)
  js.write(bytes)
  const answer = await readAnswer(js, waitMs)
  if (answer.answer !== 'stream_ended' && answer.answer !== 'bad_frame') Object.assign(answer, await afterAnswer(js))
  await js.close()
  return answer
}

const isJobError = (code, jobIdWanted) => (a) => a.answer === 'job_error' && a.body.code === code && (jobIdWanted === undefined || a.body.job_id === jobIdWanted)
const isRefusal = (reason, id) => (a) => a.answer === 'job_refusal' && a.body.reason === reason && a.body.job_id === id
const isReset = (a) => a.answer === 'stream_ended'

function spec (opts, over = {}) {
  return textToImageSpec({ prompt: opts.prompt, width: opts.width, height: opts.height, steps: opts.steps, seed: opts.seed, modelId: opts.model, guidance: opts.guidance, ...over })
}

async function badPeer (mode, node, peerId, opts) {
  const request = (s) => buildRequest(opts, s)
  switch (mode) {
    case 'forged-signature': {
      // A QuoteRequest carries no signature (the requester is the Noise-authenticated peer, §7.2). The
      // nearest forgery: a QuoteRequest wrapped in a `signed` envelope whose signature is garbage and whose
      // signer claims another peer. §4.1/§8.3.1: another message type first -> JobError("", protocol_violation).
      const other = (await generateKeyPair('Ed25519')).publicKey.raw
      const inner = encodeMessage('job_quote_request', request(spec(opts)))
      const env = encodeMessage('signed', { payload: inner, signature: new Uint8Array(randomBytes(64)), signer: peerIdFromPublicKey(other) })
      const a = await probe(node, peerId, opts, frame(KIND_MESSAGE, env))
      return { sent: 'a QuoteRequest inside a `signed` envelope with a random signature claiming another signer', expected: 'JobError job_id "" code protocol_violation (§8.3 worker rule 1)', answer: a, ok: isJobError('protocol_violation', '')(a) }
    }
    case 'garbage': {
      const a = await probe(node, peerId, opts, frame(KIND_MESSAGE, new Uint8Array(randomBytes(200)).map((b, i) => (i === 0 ? 0xc1 : b))))
      return { sent: 'a MESSAGE frame of 200 bytes that are not msgpack (0xc1 first)', expected: 'JobError job_id "" protocol_violation, stream left framed (§6, §8.3 rule 1)', answer: a, ok: isJobError('protocol_violation', '')(a) }
    }
    case 'garbage-kind': {
      const a = await probe(node, peerId, opts, Buffer.concat([Buffer.from([0x07, 0, 0, 0, 4]), Buffer.from('junk')]))
      return { sent: 'a frame of kind 0x07', expected: 'stream reset, no answer (§6: any other kind byte is garbage: the receiver resets the stream)', answer: a, ok: isReset(a) }
    }
    case 'oversized-frame': {
      // header announcing 278,529 bytes (one past the job-message limit), then that many bytes
      const n = MAX_JOB_FRAME_BYTES + 1
      const head = Buffer.alloc(5); head[0] = KIND_MESSAGE; head.writeUInt32BE(n, 1)
      const a = await probe(node, peerId, opts, Buffer.concat([head, Buffer.alloc(n)]))
      return { sent: `a MESSAGE frame announcing ${n} bytes`, expected: 'stream reset before the body is read (§6)', answer: a, ok: isReset(a) }
    }
    case 'oversized-message': {
      // a well-formed frame under 278,528 but a QuoteRequest over its own 32,768 bound (§4.5), padded by an
      // unknown field (which would otherwise be ignored, §4.4)
      const r = request(spec(opts))
      r.padding = new Uint8Array(40000)
      const a = await probe(node, peerId, opts, messageFrame('job_quote_request', r))
      return { sent: 'a 40 KB QuoteRequest (bound 32,768; padded with an unknown bin field)', expected: 'JobError job_id "" protocol_violation (§4.3: size checked before decoding; §4.4 malformed)', answer: a, ok: isJobError('protocol_violation', '')(a) }
    }
    case 'unknown-model': {
      const s = spec(opts, { modelId: 'no-such/model-xyz' })
      const r = request(s)
      const a = await probe(node, peerId, opts, messageFrame('job_quote_request', r))
      const id = jobId(s, peerId, r.nonce)
      return { sent: 'a QuoteRequest for model "no-such/model-xyz"', expected: `Refusal unknown_model for job ${id} (§12)`, answer: a, ok: isRefusal('unknown_model', id)(a) }
    }
    case 'absurd-params': {
      const s = spec(opts, { width: 100000 })
      const a = await probe(node, peerId, opts, messageFrame('job_quote_request', request(s)))
      return { sent: 'a QuoteRequest with width 100000 (field bound 8..8192)', expected: 'JobError job_id "" protocol_violation (§4.3: out of range = malformed; §8.3 rule 1)', answer: a, ok: isJobError('protocol_violation', '')(a) }
    }
    case 'too-large': {
      const s = spec(opts, { width: 4096, height: 4096 })
      const r = request(s)
      const a = await probe(node, peerId, opts, messageFrame('job_quote_request', r))
      const id = jobId(s, peerId, r.nonce)
      return { sent: 'a QuoteRequest for 4096x4096 (within the field bounds, beyond the tiny model\'s limits)', expected: `Refusal unsupported_params for job ${id} (§7.1, §12)`, answer: a, ok: isRefusal('unsupported_params', id)(a) }
    }
    case 'disconnect-after-accept': {
      // more jobs accepted and abandoned than the worker holds reservations (4, §13): if any reservation
      // leaked, the job after them would be refused busy
      const rounds = opts.rounds
      const abandoned = []
      // a job long enough to be running when we leave (the tiny preset's largest: 256x256, 50 steps)
      const big = { ...opts, width: opts.abandonSide, height: opts.abandonSide, steps: opts.abandonSteps, maxPrice: 1e15 }
      for (let i = 0; i < rounds; i++) {
        let held
        try { held = await runJob(node, peerId, big, { stopAfterAccept: true }) } catch (err) {
          abandoned.push({ ok: false, phase: err.phase, error: err.message, ...err.extra })
          continue
        }
        await new Promise(resolve => setTimeout(resolve, 200)) // let it start running
        const during = opts.rpc ? await queueDepth(opts) : null
        held.js.reset() // the stream reset; the worker must see it as `disconnected` and free the reservation
        abandoned.push({ ok: true, job_id: held.id, queue_depth_while_running: during?.queue_depth ?? null })
      }
      // close the whole connection too, once
      await Promise.all(node.getConnections().map(c => c.close().catch(() => {})))
      const rpcBefore = opts.rpc ? await queueDepth(opts) : null
      // how long until the worker's RPC says nothing is queued or running (polled every 100 ms)
      let rpcAfter = null
      if (opts.rpc) {
        const t = Date.now()
        do { rpcAfter = await queueDepth(opts); if (rpcAfter.queue_depth === 0) break; await new Promise(resolve => setTimeout(resolve, 100)) } while (Date.now() - t < opts.settleMs)
        rpcAfter.waited_ms = Date.now() - t
      }
      let next
      try {
        const done = await runJob(node, peerId, opts)
        next = { ok: true, price: done.quote.price, total_ms: done.timings.total_ms, sha256: done.receipt.outputs[0].sha256 }
      } catch (err) { next = { ok: false, phase: err.phase, error: err.message, ...err.extra } }
      const rpcEnd = opts.rpc ? await queueDepth(opts) : null
      const ok = next.ok && abandoned.every(a => a.ok) && (rpcAfter === null || rpcAfter.queue_depth === 0)
      return {
        sent: `${rounds} jobs accepted then reset (and the connection closed)`,
        expected: 'each reservation freed (§8.3 rule 2, §8.6 disconnected): queue_depth back to 0 and the next job served',
        answer: { abandoned, rpc_right_after: rpcBefore, rpc_until_idle: rpcAfter, next_job: next, rpc_at_end: rpcEnd },
        ok
      }
    }
    case 'silent-stream': {
      // §8.3 rule 1 / §8.8 / §13: a stream with no QuoteRequest for 10 s ends without a word
      const { js } = await openJobStream(node, opts.addr)
      const a = await readAnswer(js, 60000)
      await js.close()
      return { sent: 'nothing: a job stream opened and left silent', expected: 'the worker ends the stream without a word after 10 s (§8.3 rule 1, §13)', answer: a, ok: a.answer === 'stream_ended' && a.after_ms >= 5000 && a.after_ms <= 11000 }
    }
    case 'cancel-mid-run': {
      // §8.4: the worker stops the run, frees the reservation, sends nothing back and waits for the close
      const big = { ...opts, width: opts.abandonSide, height: opts.abandonSide, steps: opts.abandonSteps, maxPrice: 1e15 }
      const held = await runJob(node, peerId, big, { stopAfterAccept: true })
      const first = await readAnswer(held.js, 10000)
      held.js.send('job_cancel', { job_id: held.id, reason: 'user' })
      const seen = []
      let a
      for (;;) { a = await readAnswer(held.js, 15000); if (a.answer !== 'job_progress') break; seen.push(a.body.step) }
      await held.js.close()
      const rpc = opts.rpc ? await queueDepth(opts) : null
      return { sent: 'Accept, then Cancel(user) at the first Progress', expected: 'no further message; the stream ends after the worker waited up to 10 s for our close (§8.4, §8.6)', answer: { first: first.answer, progress_after_cancel: seen.length, then: a, rpc }, ok: first.answer === 'job_progress' && a.answer === 'stream_ended' && seen.length <= 2 }
    }
    default:
      throw new Error(`unknown mode ${mode}`)
  }
}

async function queueDepth (opts) {
  const res = await fetch(`${opts.rpc.replace(/\/$/, '')}/v1/node`, { headers: { Authorization: `Bearer ${opts.token}` } })
  const j = await res.json()
  return { status: res.status, queue_depth: j.queue_depth, queue_capacity: j.queue_capacity }
}

// ------------------------------------------------------------------ main

const MODES = ['job', 'forged-signature', 'garbage', 'garbage-kind', 'oversized-frame', 'oversized-message', 'unknown-model', 'absurd-params', 'too-large', 'disconnect-after-accept', 'silent-stream', 'cancel-mid-run']

async function main () {
  const { values } = parseArgs({
    options: {
      'self-test': { type: 'boolean', default: false },
      addr: { type: 'string' },
      mode: { type: 'string', default: 'job' },
      pipeline: { type: 'string', default: 'text-to-image' },
      prompt: { type: 'string', default: 'a lighthouse at dusk' },
      width: { type: 'string', default: '64' },
      height: { type: 'string', default: '64' },
      steps: { type: 'string', default: '2' },
      seed: { type: 'string' },
      guidance: { type: 'string', default: '1.5' },
      'max-price': { type: 'string', default: '1000000' },
      'deadline-ms': { type: 'string', default: '120000' },
      model: { type: 'string', default: '' },
      'accept-in-advance': { type: 'boolean', default: false },
      out: { type: 'string', default: 'out.png' },
      rpc: { type: 'string' },
      token: { type: 'string' },
      rounds: { type: 'string', default: '5' },
      'settle-ms': { type: 'string', default: '15000' },
      'no-ping': { type: 'boolean', default: false },
      'accept-delay-ms': { type: 'string', default: '0' },
      'abandon-side': { type: 'string', default: '256' },
      'abandon-steps': { type: 'string', default: '50' }
    }
  })
  if (values['self-test']) {
    const { selfTest } = await import('./selftest.mjs')
    const r = await selfTest()
    console.log(JSON.stringify({ mode: 'self-test', ...r }))
    return r.ok ? 0 : 1
  }
  if (!values.addr) throw new Error('--addr <multiaddr>/p2p/<peer id> is required')
  if (values.pipeline !== 'text-to-image') throw new Error('only --pipeline text-to-image is implemented')
  if (!MODES.includes(values.mode)) throw new Error(`--mode is one of ${MODES.join(', ')}`)
  const opts = {
    addr: values.addr,
    prompt: values.prompt,
    width: Number(values.width),
    height: Number(values.height),
    steps: Number(values.steps),
    seed: values.seed === undefined ? Number(randomBytes(6).readUIntBE(0, 6)) : Number(values.seed),
    guidance: Number(values.guidance),
    maxPrice: Number(values['max-price']),
    deadlineMs: Number(values['deadline-ms']),
    model: values.model,
    acceptInAdvance: values['accept-in-advance'],
    rpc: values.rpc,
    token: values.token,
    rounds: Number(values.rounds),
    settleMs: Number(values['settle-ms']),
    acceptDelayMs: Number(values['accept-delay-ms']),
    abandonSide: Number(values['abandon-side']),
    abandonSteps: Number(values['abandon-steps'])
  }
  const { node, peerId } = await startNode({ withPing: !values['no-ping'] })
  try {
    if (values.mode !== 'job') {
      const r = await badPeer(values.mode, node, peerId, opts)
      console.log(JSON.stringify({ mode: values.mode, requester: peerId, ...r }))
      return r.ok ? 0 : 1
    }
    let done
    try { done = await runJob(node, peerId, opts) } catch (err) {
      if (!(err instanceof JobFailed)) throw err
      console.log(JSON.stringify({ ok: false, mode: 'job', requester: peerId, phase: err.phase, error: err.message, ...err.extra }))
      return 1
    }
    const out = done.outputs[0]
    const png = checkPng(out.bytes)
    writeFileSync(values.out, out.bytes)
    writeFileSync(`${values.out}.receipt`, done.receiptBytes)
    const r = done.receipt
    const pngOk = png.ok && png.width === opts.width && png.height === opts.height
    console.log(JSON.stringify({
      ok: pngOk,
      mode: 'job',
      worker: done.workerId,
      requester: peerId,
      job_id: done.id,
      price: done.quote.price,
      quote: { quote_id: done.quote.quote_id, model_id: done.quote.model_id, eta_ms: done.quote.eta_ms, warm: done.quote.warm, life_ms: done.quote.expires_at_ms - done.quote.issued_at_ms },
      receipt: {
        signature_valid: true,
        job_id: r.job_id,
        requester_peer_id: r.requester_peer_id,
        worker_peer_id: r.worker_peer_id,
        nonce: hex(r.nonce),
        quote_id: r.quote_id,
        price: r.price,
        model_id: r.model_id,
        weights_sha256: r.weights_sha256,
        seed: r.spec.seed,
        params: toJSON(r.spec.text_to_image),
        runtime: toJSON(r.runtime),
        timings: toJSON(r.timings),
        seq: toJSON(r.seq),
        issued_at_ms: r.issued_at_ms,
        outputs: toJSON(r.outputs.map(o => ({ name: o.name, media_type: o.media_type, size_bytes: o.size_bytes, sha256: o.sha256, pixel_sha256: o.pixel_sha256 })))
      },
      output: { path: values.out, sha256: hex(sha256(out.bytes)), sha256_matches_receipt: hex(sha256(out.bytes)) === out.entry.sha256, size_bytes: out.bytes.length, chunks: out.chunks, chunk_bytes: out.chunkBytes, png },
      progress: done.progress,
      timings: done.timings
    }))
    return pngOk ? 0 : 1
  } finally {
    await node.stop()
  }
}

main().then(code => process.exit(code), err => {
  console.log(JSON.stringify({ ok: false, error: String(err?.stack ?? err) }))
  process.exit(2)
})
