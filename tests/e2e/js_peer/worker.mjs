#!/usr/bin/env node
// An independent lpnode *worker* in JavaScript, written from docs/protocol.md alone (the requester's
// counterpart, requester.mjs, proved the other side). It dials an lpnode node, publishes signed adverts on
// gossipsub (§11), and answers /lpnode/job/1 streams (§8): signed Quote, Progress, Result with a signed
// Receipt, the output as a chunked transfer (§9). Its "model" draws a PNG from the seed, deterministically.
//
//   node worker.mjs --bootstrap /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... [--model lpnode/tiny-sdxl]
//        [--accept-in-advance] [--mode MODE] [--events events.jsonl] [--events-stdout] [--price-per-mpx-step 100]
//   node worker.mjs --render --seed 42 --width 64 --height 64 [--prompt P]   (prints the PNG's sha256)
//
// Prints one JSON line when ready: {"ready": true, "peer_id", "listen_addrs", "mode"}; then one JSON line
// per event (advert published, job phases) to --events, and to stdout with --events-stdout (or nowhere).
// Runs until SIGINT/SIGTERM.
//
// MODE is `honest` or a bad worker (see BAD_MODES): each misbehaves on every job it takes, at one step.
import { parseArgs } from 'node:util'
import { appendFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub } from '@chainsafe/libp2p-gossipsub'
import { multiaddr } from '@multiformats/multiaddr'
import { generateKeyPair } from '@libp2p/crypto/keys'
import {
  F64, KIND_DATA, KIND_MESSAGE, MAX_JOB_FRAME_BYTES, decodeMessage, encodeMessage, f64, frame, hex, isHex64, jobId,
  normaliseSpec, openSigned, peerIdFromPublicKey, sha256, sign, toJSON
} from './codec.mjs'
import { BadFrame, FrameTimeout, JOB_PROTOCOL, JobStream, StreamEnded } from './jobstream.mjs'
import { dhash, phash, renderPng } from './fakemodel.mjs'

if (!Promise.withResolvers) { // Node 20: libp2p 2.x expects it
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const TOPIC = 'lpnode/adverts/1' // §11.1
const REQUEST_WAIT_MS = 10000 // §8.3 rule 1, §8.8
const QUOTE_LIFE_MS = 15000 // §8.8, §13
const LINGER_MS = 10000 // §8.6
const LINGER_BYTES = 65536 // §8.6, §13
const CHUNK_BYTES = 262144 // §9, §13: what senders use
const MAX_JOBS = 4 // §13: reservations (quoted or running jobs)
const MAX_STREAMS = 64 // §13: open job streams
const PROGRESS_EVERY_MS = 15000 // §8.8: at least this often while a job waits or runs
const SOFTWARE_VERSION = 'js-worker/0.1.0'

// Bad workers: each breaks one promise of the doc, on every job, at one step.
const BAD_MODES = {
  'quote-bad-signature': 'the Quote envelope\'s signature has one bit flipped (§5, §8.3 requester rule 2)',
  'quote-over-price': 'the Quote asks max_price + 1 (§7.3, §8.3 requester rule 2)',
  'quote-above-advert': 'the Quote asks 1 more than its own advert implies for the job, within max_price (§8.2, §11.2)',
  'receipt-bad-signature': 'the Receipt envelope\'s signature has one bit flipped (§10.2 step 2)',
  'receipt-wrong-seed': 'the Receipt signs seed + 1, with the job id of that other spec: it verifies offline, but is not this job\'s (§10.3)',
  'receipt-wrong-requester': 'the Receipt names another requester (and that job id): it verifies offline, but is not this job\'s (§10.3)',
  'output-hash-mismatch': 'the Result, Receipt and transfer header name the PNG\'s sha256, the bytes sent have one byte changed (§9, §10.3)',
  'not-a-png': 'the output is random bytes, truthfully hashed and signed as image/png (§10.3 "SHOULD check")',
  'wrong-size': 'the output is a real PNG of half the requested width, truthfully hashed and signed (§10.3)',
  'garbage-frame': 'after the Accept, a frame of kind 0x07 where Progress or the Result is due (§6)',
  'garbage-message': 'after the Accept, a MESSAGE frame whose body is not msgpack (§4, §8.3 requester rule 5)',
  'vanish-after-accept': 'after the Accept, the stream is reset and nothing more is sent (§8.6 disconnected)',
  'silent-after-accept': 'after the Accept, nothing: no Progress, no Result (§8.8 requester: 60 s of silence, and the deadline)',
  'result-wrong-job': 'Progress and the Result name another job id (§8.3 requester rule 5)'
}

// ------------------------------------------------------------------ events

let eventsPath = null
let eventsToStdout = false // after the ready line, when --events-stdout: a test reads them as they come
function event (kind, fields = {}) {
  const line = JSON.stringify({ t: Date.now(), event: kind, ...toJSON(fields) })
  if (eventsToStdout) process.stdout.write(line + '\n')
  if (eventsPath === null) return
  try { appendFileSync(eventsPath, line + '\n') } catch {}
}

// ------------------------------------------------------------------ request validation (§4.3, §7)

class Malformed extends Error {}

const isInt = (v, lo, hi) => (typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi) || (typeof v === 'bigint' && v >= BigInt(lo) && v <= BigInt(hi))
const isFloat = (v, lo, hi) => { const n = v instanceof F64 ? v.value : v; return typeof n === 'number' && Number.isFinite(n) && n >= lo && n <= hi }
const isStr = (v, n = 256) => typeof v === 'string' && [...v].length <= n
function need (cond, what) { if (!cond) throw new Malformed(what) }

const PIPELINES = ['text-to-image', 'image-to-image', 'image-to-video', 'upscale', 'frame-interpolation']
const MAX_SEED = (1n << 63n) - 1n

function checkDescriptor (d, what) {
  need(d && typeof d === 'object', `${what} is not a map`)
  need(isStr(d.name, 32) && d.name !== '', `${what}.name`)
  need(isStr(d.media_type, 64), `${what}.media_type`)
  need(isInt(d.size_bytes, 1, 2 ** 40), `${what}.size_bytes`)
  need(isHex64(d.sha256), `${what}.sha256`)
}

/** A QuoteRequest's body within the bounds of §7 (text-to-image's params in full; others only by shape). */
function checkRequest (r) {
  need(r.nonce instanceof Uint8Array && r.nonce.length >= 16 && r.nonce.length <= 32, 'nonce: bytes 16..32')
  need(isInt(r.max_price, 0, 1e15), 'max_price: int 0..10^15')
  need(isInt(r.deadline_ms, 1, 86400000), 'deadline_ms: int 1..86,400,000')
  const accept = r.accept ?? false // default false (§7.3)
  need(typeof accept === 'boolean', 'accept: bool')
  const s = r.spec
  need(s && typeof s === 'object' && !Array.isArray(s), 'spec: a map')
  need(PIPELINES.includes(s.pipeline), `spec.pipeline ${s.pipeline}`)
  need(isStr(s.model_id, 128), 'spec.model_id: str ≤ 128')
  need(isInt(s.seed, 0, MAX_SEED), 'spec.seed: int 0..2^63-1')
  need(Array.isArray(s.inputs) && s.inputs.length <= 8, 'spec.inputs: ≤ 8')
  s.inputs.forEach((d, i) => checkDescriptor(d, `spec.inputs[${i}]`))
  need(new Set(s.inputs.map(d => d.name)).size === s.inputs.length, 'spec.inputs: names not unique')
  need(s.output && isStr(s.output.media_type, 64) && isInt(s.output.max_total_bytes, 1, 2 ** 40), 'spec.output')
  const own = s.pipeline.replace(/-/g, '_')
  for (const p of ['text_to_image', 'image_to_image', 'image_to_video', 'upscale', 'frame_interpolation']) {
    const v = s[p] ?? null
    need(p === own ? (v !== null && typeof v === 'object') : v === null, `spec.${p}: set iff the pipeline is ${p}`)
  }
  if (s.pipeline === 'text-to-image') {
    const t = s.text_to_image
    need(isStr(t.prompt, 2000), 'prompt: str ≤ 2000')
    need(isStr(t.negative_prompt, 2000), 'negative_prompt: str ≤ 2000')
    need(isInt(t.width, 8, 8192) && isInt(t.height, 8, 8192), 'width, height: int 8..8192')
    need(isInt(t.num_inference_steps, 1, 1000), 'num_inference_steps: int 1..1000')
    need(isFloat(t.guidance_scale, 0, 50), 'guidance_scale: float 0..50')
    need(s.inputs.length === 0, 'text-to-image takes no inputs')
    need(s.output.media_type === 'image/png', 'text-to-image outputs image/png')
  }
  if (r.input_shape !== undefined && r.input_shape !== null) {
    const i = r.input_shape
    need(isInt(i.width, 1, 65536) && isInt(i.height, 1, 65536) && isInt(i.frames, 1, 65536), 'input_shape')
  }
  return { ...r, accept }
}

// ------------------------------------------------------------------ the worker

class Worker {
  constructor (opts) {
    this.opts = opts
    this.held = 0 // reservations: quoted or running jobs (§8.3 rule 2)
    this.streams = 0
    this.quoteCounter = 0
    this.receiptSeq = 0
    this.advertSeq = 0
    this.bootMs = Date.now()
    this.quoteIdBase = `${Date.now().toString(16)}-${randomBytes(3).toString('hex')}`
    this.stats = { jobs: 0, delivered: 0, refused: 0, errors: 0 }
  }

  async start () {
    const o = this.opts
    this.privateKey = await generateKeyPair('Ed25519')
    this.node = await createLibp2p({
      privateKey: this.privateKey,
      addresses: { listen: o.listen },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      services: {
        identify: identify(),
        ping: ping(),
        pubsub: gossipsub({
          // §11.1: StrictSign (the default), D = 6, heartbeat 1 s, own messages flood-published
          globalSignaturePolicy: 'StrictSign',
          D: 6,
          Dlo: 4,
          Dhi: 12,
          heartbeatInterval: 1000,
          floodPublish: true,
          allowPublishToZeroTopicPeers: true,
          emitSelf: false,
          fallbackToFloodsub: false
        })
      }
    })
    this.peerId = peerIdFromPublicKey(this.privateKey.publicKey.raw)
    if (this.peerId !== this.node.peerId.toString()) throw new Error(`our peer id ${this.peerId} is not libp2p's ${this.node.peerId}`)
    await this.node.handle(JOB_PROTOCOL, (data) => { this.onStream(data).catch(err => event('stream_crash', { error: String(err?.stack ?? err) })) }, { maxInboundStreams: MAX_STREAMS * 2, runOnLimitedConnection: false })
    const pubsub = this.node.services.pubsub
    pubsub.subscribe(TOPIC)
    // §11.3: publish when a peer subscribes to the topic (the reference does it for a peer it has no advert from)
    pubsub.addEventListener('subscription-change', (e) => {
      if (e.detail.subscriptions.some(s => s.topic === TOPIC && s.subscribe)) { event('peer_subscribed', { peer: e.detail.peerId.toString() }); this.advertSoon() }
    })
    pubsub.addEventListener('message', (e) => { if (e.detail.topic === TOPIC) this.seenAdverts = (this.seenAdverts ?? 0) + 1 })
    this.node.addEventListener('peer:connect', (e) => { event('connected', { peer: e.detail.toString() }); this.advertSoon() })
    this.node.addEventListener('peer:disconnect', (e) => event('disconnected', { peer: e.detail.toString() }))
    for (const addr of o.bootstrap) {
      try { await this.node.dial(multiaddr(addr), { signal: AbortSignal.timeout(10000) }) } catch (err) { event('dial_failed', { addr, error: err.message }) }
    }
    await this.publishAdvert()
    this.timer = setInterval(() => this.publishAdvert().catch(err => event('advert_failed', { error: err.message })), o.advertIntervalMs)
  }

  listenAddrs () {
    return this.node.getMultiaddrs().map(a => a.toString()).filter(a => a.includes('/tcp/')).map(a => (a.includes('/p2p/') ? a : `${a}/p2p/${this.peerId}`)).slice(0, 16)
  }

  advert () {
    const o = this.opts
    const now = Date.now()
    this.advertSeq = Math.max(this.advertSeq + 1, now) // §11.3
    return {
      peer_id: this.peerId,
      seq: this.advertSeq,
      issued_at_ms: now,
      expires_at_ms: now + o.advertTtlMs,
      listen_addrs: this.listenAddrs(),
      software_version: SOFTWARE_VERSION,
      protocol_version: 1,
      gpus: [{ name: 'cpu', kind: 'cpu', vram_total_bytes: 0, vram_free_bytes: 0 }],
      models: [{
        pipeline: 'text-to-image',
        model_id: o.model,
        weights_sha256: o.weightsSha256,
        warm: true,
        speed_mpx_steps_per_s: f64(o.speed),
        price_per_mpx_step: o.pricePerMpxStep,
        limits: { max_pixels: o.maxSide * o.maxSide, max_side: o.maxSide, max_steps: o.maxSteps, max_frames: 1, max_batch: 1, max_total_pixels: 0 }
      }],
      queue_depth: this.held,
      queue_capacity: MAX_JOBS,
      job_features: o.acceptInAdvance ? ['accept_in_advance'] : []
    }
  }

  async publishAdvert () {
    const body = this.advert()
    const data = await sign(this.privateKey, 'advert', body)
    let recipients = null
    try {
      const r = await this.node.services.pubsub.publish(TOPIC, data)
      recipients = r.recipients.map(p => p.toString())
    } catch (err) { event('advert_failed', { seq: body.seq, error: err.message }); return }
    event('advert', { seq: body.seq, bytes: data.length, recipients, queue_depth: body.queue_depth })
  }

  advertSoon () { // §11.3: soon after a change, never more often than every 0.5 s
    if (this.soon) return
    const wait = Math.max(50, 500 - (Date.now() - (this.lastSoon ?? 0)))
    this.soon = setTimeout(() => { this.soon = null; this.lastSoon = Date.now(); this.publishAdvert().catch(() => {}) }, wait)
  }

  async stop () {
    clearInterval(this.timer)
    if (this.soon) clearTimeout(this.soon)
    await this.node.stop()
  }

  // -------------------------------------------------------------- one job stream (§8)

  async onStream ({ stream, connection }) {
    const requester = connection.remotePeer.toString() // §7.2: the authenticated remote peer, never a claimed id
    const js = new JobStream(stream)
    if (this.streams >= MAX_STREAMS) { await js.close(); return } // §2: more are closed at once without a word
    this.streams++
    const job = { requester, t0: Date.now(), reserved: false }
    try {
      await this.serve(js, job)
    } catch (err) {
      event('job_failed', { job_id: job.id ?? '', requester, error: String(err?.message ?? err), phase: job.phase })
      js.reset()
    } finally {
      this.streams--
      if (job.reserved) { this.held--; this.advertSoon() }
    }
  }

  jobError (js, id, code, message) {
    this.stats.errors++
    js.send('job_error', { job_id: id, code, message: message.slice(0, 512) })
  }

  async serve (js, job) {
    const o = this.opts
    const mode = o.mode
    // 1. the QuoteRequest, within 10 s of the stream opening (§8.3 rule 1, §8.7: a spare stream waits here)
    job.phase = 'request'
    let first
    try { first = await js.readFrame(MAX_JOB_FRAME_BYTES, REQUEST_WAIT_MS) } catch (err) {
      if (err instanceof FrameTimeout) { event('silent_stream', { requester: job.requester }); await js.close(); return } // ends without a word
      if (err instanceof StreamEnded) { event('stream_ended_unused', { requester: job.requester }); return }
      throw err // BadFrame: reset
    }
    const arrived = Date.now()
    let request
    try {
      if (first.kind !== KIND_MESSAGE) throw new Malformed('a DATA frame first')
      request = checkRequest(decodeMessage(first.body, 'job_quote_request').body)
    } catch (err) {
      event('bad_request', { requester: job.requester, error: err.message })
      this.jobError(js, '', 'protocol_violation', `not a valid QuoteRequest: ${err.message}`)
      return this.linger(js)
    }
    const spec = request.spec
    const id = jobId(spec, job.requester, request.nonce)
    job.id = id
    js.jobId = id
    const deadline = arrived + request.deadline_ms
    event('request', { job_id: id, requester: job.requester, accept: request.accept, model_id: spec.model_id, pipeline: spec.pipeline, seed: spec.seed, params: spec.text_to_image, max_price: request.max_price, deadline_ms: request.deadline_ms })

    // 2. refuse, or reserve and quote (§8.3 rule 2)
    const refuse = (reason, message, retryAfterMs = 0) => {
      this.stats.refused++
      event('refused', { job_id: id, reason, message })
      js.send('job_refusal', { job_id: id, reason, message, retry_after_ms: retryAfterMs })
      return this.linger(js)
    }
    if (spec.pipeline !== 'text-to-image') return refuse('unsupported_pipeline', `only text-to-image is served here, not ${spec.pipeline}`)
    if (spec.model_id !== '' && spec.model_id !== o.model) return refuse('unknown_model', `this worker serves ${o.model}`)
    const t = spec.text_to_image
    if (t.width > o.maxSide || t.height > o.maxSide || t.num_inference_steps > o.maxSteps) return refuse('unsupported_params', `at most ${o.maxSide}x${o.maxSide} and ${o.maxSteps} steps`)
    const work = t.width * t.height * t.num_inference_steps / 1e6 // §11.2: megapixel-steps
    let price = Math.ceil(work * o.pricePerMpxStep)
    if (price > request.max_price && mode !== 'quote-over-price') return refuse('price', `this job costs ${price}, max_price is ${request.max_price}`)
    const runMs = t.num_inference_steps * o.stepMs
    if (arrived + runMs > deadline) return refuse('deadline', `it takes ${runMs} ms`)
    if (this.held >= MAX_JOBS) return refuse('busy', `${this.held} jobs held`, 1000)
    this.held++
    job.reserved = true
    this.advertSoon()
    if (mode === 'quote-over-price') price = Number(request.max_price) + 1
    if (mode === 'quote-above-advert' && price < request.max_price) price += 1

    job.phase = 'quote'
    const issued = Date.now()
    const quote = {
      quote_id: `${this.quoteIdBase}-${++this.quoteCounter}`,
      job_id: id,
      worker_peer_id: this.peerId,
      price,
      eta_ms: Math.min(86400000, runMs + 200),
      warm: true,
      model_id: o.model,
      weights_sha256: o.weightsSha256,
      issued_at_ms: issued,
      expires_at_ms: issued + QUOTE_LIFE_MS
    }
    let quoteEnv = await sign(this.privateKey, 'job_quote', quote)
    if (mode === 'quote-bad-signature') quoteEnv = flipSignatureBit(quoteEnv)
    js.write(frame(KIND_MESSAGE, quoteEnv))
    event('quoted', { job_id: id, quote_id: quote.quote_id, price, accept_in_advance: request.accept })

    // 3. the Accept (classic flow), before the quote expires (§8.3 rule 3); taken in advance, none comes
    let taken
    if (request.accept) taken = Date.now()
    else {
      job.phase = 'accept'
      const wait = Math.min(issued + QUOTE_LIFE_MS, deadline) - Date.now()
      let m
      try { m = await js.readMessage(MAX_JOB_FRAME_BYTES, Math.max(0, wait)) } catch (err) {
        if (err instanceof FrameTimeout) { this.jobError(js, id, 'quote_expired', 'no Accept within the quote\'s life'); return this.linger(js) }
        if (err instanceof StreamEnded) { event('gone_before_accept', { job_id: id }); return }
        if (err instanceof BadFrame) throw err
        this.jobError(js, id, 'protocol_violation', `where an Accept was due: ${err.message}`); return this.linger(js)
      }
      if (m.tag === 'job_cancel') {
        event('cancelled', { job_id: id, phase: 'quoted', reason: m.body.reason })
        if (m.body.job_id !== id) { this.jobError(js, id, 'protocol_violation', 'a Cancel naming another job'); return this.linger(js) }
        return this.linger(js)
      }
      if (m.tag !== 'job_accept') { this.jobError(js, id, 'protocol_violation', `${m.tag} where an Accept was due`); return this.linger(js) }
      const a = m.body
      if (Date.now() > issued + QUOTE_LIFE_MS) { this.jobError(js, id, 'quote_expired', 'the Accept came after the quote expired'); return this.linger(js) }
      if (a.quote_id !== quote.quote_id || a.job_id !== id || !Array.isArray(a.inputs) || a.inputs.length !== spec.inputs.length) {
        this.jobError(js, id, 'protocol_violation', 'the Accept names another quote, job or inputs'); return this.linger(js)
      }
      taken = Date.now()
    }
    event('accepted', { job_id: id, in_advance: request.accept })
    // 4. inputs: text-to-image has none

    // bad workers that break the stream right after the Accept
    if (mode === 'vanish-after-accept') { event('misbehaved', { job_id: id, mode }); js.reset(); return }
    if (mode === 'garbage-frame') { event('misbehaved', { job_id: id, mode }); js.write(Buffer.concat([Buffer.from([0x07, 0, 0, 0, 4]), Buffer.from('junk')])); return this.linger(js) }
    if (mode === 'garbage-message') { event('misbehaved', { job_id: id, mode }); js.write(frame(KIND_MESSAGE, Buffer.from([0xc1, ...randomBytes(63)]))); return this.linger(js) }
    if (mode === 'silent-after-accept') { event('misbehaved', { job_id: id, mode }); return this.linger(js, deadline - Date.now() + 15000) }

    // 5. run, with Progress, reading the requester's messages meanwhile (a Cancel)
    job.phase = 'run'
    const wire = mode === 'result-wrong-job' ? hex(sha256(Buffer.from(id))) : id
    let incoming = js.readMessage(MAX_JOB_FRAME_BYTES, Math.max(1, deadline - Date.now() + LINGER_MS)).then(m => ({ m }), err => ({ err }))
    let interrupted = null
    incoming.then(x => { interrupted = x })
    const steps = t.num_inference_steps
    let lastProgress = 0
    const progress = (stage, step, total) => {
      js.send('job_progress', { job_id: wire, stage, step, total, elapsed_ms: Math.min(86400000, Date.now() - taken) })
      lastProgress = Date.now()
    }
    progress('load', 1, 1)
    for (let i = 1; i <= steps; i++) {
      await sleep(o.stepMs)
      if (interrupted) break
      if (Date.now() > deadline) { this.jobError(js, id, 'deadline_exceeded', 'deadline passed'); return this.linger(js, LINGER_MS, incoming) }
      if (i === steps || Date.now() - lastProgress >= Math.min(PROGRESS_EVERY_MS, o.progressEveryMs)) progress('denoise', i, steps)
    }
    if (interrupted) {
      if (interrupted.err) { event('requester_gone', { job_id: id, phase: 'run', error: interrupted.err.message }); return this.linger(js, 0) }
      const m = interrupted.m
      if (m.tag === 'job_cancel' && m.body.job_id === id) { event('cancelled', { job_id: id, phase: 'run', reason: m.body.reason }); return this.linger(js) }
      this.jobError(js, id, 'protocol_violation', `${m.tag} during the run`)
      return this.linger(js)
    }
    const runMsTaken = Date.now() - taken
    const image = renderPng({ seed: spec.seed, prompt: t.prompt, width: t.width, height: t.height })
    let png = image.png
    let rgb = image.rgb
    let [w, h] = [t.width, t.height]
    if (mode === 'wrong-size') {
      w = Math.max(8, t.width >> 1)
      const half = renderPng({ seed: spec.seed, prompt: t.prompt, width: w, height: h })
      png = half.png; rgb = half.rgb
    }
    if (mode === 'not-a-png') png = Buffer.from(randomBytes(png.length))
    const digest = hex(sha256(png))
    const out = {
      name: 'output',
      media_type: 'image/png',
      size_bytes: png.length,
      sha256: digest,
      pixel_sha256: hex(sha256(rgb)),
      phash: [phash(rgb, w, h)],
      dhash: [dhash(rgb, w, h)]
    }

    // 6. Result with the signed Receipt, then the output's transfer (§8.3 rule 6, §10)
    job.phase = 'result'
    let rspec = spec
    let rrequester = job.requester
    if (mode === 'receipt-wrong-seed') rspec = { ...spec, seed: typeof spec.seed === 'bigint' ? spec.seed + 1n : spec.seed + 1 }
    if (mode === 'receipt-wrong-requester') rrequester = peerIdFromPublicKey((await generateKeyPair('Ed25519')).publicKey.raw)
    const receipt = {
      job_id: rspec === spec && rrequester === job.requester ? id : jobId(rspec, rrequester, request.nonce),
      requester_peer_id: rrequester,
      worker_peer_id: this.peerId,
      nonce: request.nonce,
      spec: normaliseSpec(rspec), // §15.1: the decoded spec in canonical form, exactly what the job id hashes
      quote_id: quote.quote_id,
      price,
      model_id: o.model,
      weights_sha256: o.weightsSha256,
      runtime: { device: 'cpu', dtype: 'float32', libraries: [{ name: 'node', version: process.versions.node }, { name: 'lpnode-js-worker', version: '0.1.0' }] },
      outputs: [out],
      timings: { queue_ms: 0, load_ms: 0, run_ms: runMsTaken },
      seq: this.nextReceiptSeq(),
      issued_at_ms: Date.now()
    }
    let receiptBytes = await sign(this.privateKey, 'receipt', receipt)
    if (mode === 'receipt-bad-signature') receiptBytes = flipSignatureBit(receiptBytes)
    const descriptor = { name: out.name, media_type: out.media_type, size_bytes: out.size_bytes, sha256: out.sha256 }
    js.send('job_result', { job_id: wire, outputs: [descriptor], receipt: receiptBytes })
    let sent = png
    if (mode === 'output-hash-mismatch') { sent = Buffer.from(png); sent[sent.length >> 1] ^= 0xff }
    this.sendTransfer(js, sent, 'image/png', sha256(png))
    this.stats.delivered++
    event('result', {
      job_id: id,
      requester: job.requester,
      quote_id: quote.quote_id,
      price,
      seed: spec.seed,
      width: w,
      height: h,
      output_sha256: digest,
      sent_sha256: hex(sha256(sent)),
      output_bytes: sent.length,
      receipt_sha256: hex(sha256(receiptBytes)),
      receipt_seq: receipt.seq,
      run_ms: runMsTaken,
      mode
    })
    // 7. the requester closes; we wait for it (§8.6). A Cancel crossing the Result is ignored (§8.4).
    job.phase = 'linger'
    return this.linger(js, LINGER_MS, incoming)
  }

  nextReceiptSeq () { // §10.1: strictly increasing over all our receipts, across restarts: from the clock
    this.receiptSeq = Math.max(this.receiptSeq + 1, Date.now() * 1000)
    return this.receiptSeq
  }

  sendTransfer (js, bytes, mediaType, digest) { // §9
    js.send('transfer_header', { total_bytes: bytes.length, sha256: digest, media_type: mediaType, chunk_bytes: CHUNK_BYTES })
    for (let p = 0; p < bytes.length; p += CHUNK_BYTES) js.write(frame(KIND_DATA, bytes.subarray(p, Math.min(bytes.length, p + CHUNK_BYTES))))
    js.write(frame(KIND_DATA, new Uint8Array(0)))
  }

  /**
   * §8.6: the worker does not close first. Wait up to `ms` for the requester's close or reset, dropping at
   * most 64 KiB meanwhile, then close. `pending`: a read already under way (its outcome counts as a frame).
   */
  async linger (js, ms = LINGER_MS, pending = null, jobOf = js.jobId ?? '') {
    const until = Date.now() + ms
    let dropped = 0
    let how = 'timeout'
    const seen = [] // what the requester sent meanwhile (a Cancel and its reason, typically)
    try {
      if (pending) {
        const x = await Promise.race([pending, sleep(Math.max(0, until - Date.now())).then(() => ({ err: new FrameTimeout('linger') }))])
        if (x.err instanceof StreamEnded) { how = endHow(x.err); return }
        if (x.err instanceof FrameTimeout) return
        if (x.err) { how = 'bad_frame'; return }
        dropped += x.m.raw.length
        seen.push(x.m.tag === 'job_cancel' ? `job_cancel:${x.m.body.reason}` : x.m.tag)
      }
      while (Date.now() < until && dropped <= LINGER_BYTES) {
        try {
          const f = await js.readFrame(HARD_LIMIT, until - Date.now())
          dropped += f.body.length + 5
          if (f.kind === KIND_MESSAGE) {
            try { const m = decodeMessage(f.body); seen.push(m.tag === 'job_cancel' ? `job_cancel:${m.body.reason}` : m.tag) } catch { seen.push('undecodable') }
          } else seen.push('data')
        } catch (err) {
          if (err instanceof StreamEnded) { how = endHow(err); return }
          if (err instanceof FrameTimeout) return
          how = 'bad_frame'; return
        }
      }
      how = dropped > LINGER_BYTES ? 'too_many_bytes' : how
    } finally {
      event('closed', { job_id: jobOf, how, dropped, seen, waited_ms: Date.now() - (until - ms) })
      await js.close()
    }
  }
}

const HARD_LIMIT = 16777216
// jobstream.mjs says 'stream ended' for an orderly end (the requester's FIN) and 'stream failed: …' for a reset
const endHow = (err) => (err.message === 'stream ended' ? 'closed_by_requester' : 'reset_by_requester')
const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))

/** A `signed` envelope with one bit of its signature flipped (still 64 bytes, still well-formed). */
function flipSignatureBit (envelopeBytes) {
  const env = decodeMessage(envelopeBytes, 'signed', 1048576).body
  const signature = Uint8Array.from(env.signature)
  signature[0] ^= 0x01
  return encodeMessage('signed', { ...env, signature })
}

// ------------------------------------------------------------------ main

async function main () {
  const { values } = parseArgs({
    options: {
      bootstrap: { type: 'string', multiple: true, default: [] },
      listen: { type: 'string', multiple: true, default: ['/ip4/127.0.0.1/tcp/0'] },
      model: { type: 'string', default: 'lpnode/tiny-sdxl' },
      'weights-sha256': { type: 'string' },
      'price-per-mpx-step': { type: 'string', default: '100' },
      speed: { type: 'string', default: '5.0' },
      'max-side': { type: 'string', default: '512' },
      'max-steps': { type: 'string', default: '50' },
      'step-ms': { type: 'string', default: '20' },
      'progress-every-ms': { type: 'string', default: '0' },
      'accept-in-advance': { type: 'boolean', default: false },
      'no-listen': { type: 'boolean', default: false }, // dial out only: adverts list no address
      'advert-interval-ms': { type: 'string', default: '5000' },
      'advert-ttl-ms': { type: 'string', default: '30000' },
      mode: { type: 'string', default: 'honest' },
      events: { type: 'string' },
      'events-stdout': { type: 'boolean', default: false },
      // --render: print the sha256 (and size) of the PNG this worker makes for a seed, and exit
      render: { type: 'boolean', default: false },
      seed: { type: 'string', default: '0' },
      width: { type: 'string', default: '64' },
      height: { type: 'string', default: '64' },
      prompt: { type: 'string', default: '' }
    }
  })
  if (values.render) {
    const { png } = renderPng({ seed: BigInt(values.seed), prompt: values.prompt, width: Number(values.width), height: Number(values.height) })
    console.log(JSON.stringify({ sha256: hex(sha256(png)), size_bytes: png.length }))
    return 0
  }
  if (values.mode !== 'honest' && !(values.mode in BAD_MODES)) throw new Error(`--mode is honest or one of ${Object.keys(BAD_MODES).join(', ')}`)
  const weights = values['weights-sha256'] ?? hex(sha256(Buffer.from('lpnode js worker: no weights, a PNG from the seed')))
  if (!isHex64(weights)) throw new Error('--weights-sha256 must be 64 lowercase hex digits')
  eventsPath = values.events ?? null
  const worker = new Worker({
    bootstrap: values.bootstrap,
    listen: values['no-listen'] ? [] : values.listen,
    model: values.model,
    weightsSha256: weights,
    pricePerMpxStep: Number(values['price-per-mpx-step']),
    speed: Number(values.speed),
    maxSide: Number(values['max-side']),
    maxSteps: Number(values['max-steps']),
    stepMs: Number(values['step-ms']),
    progressEveryMs: Number(values['progress-every-ms']),
    acceptInAdvance: values['accept-in-advance'],
    advertIntervalMs: Number(values['advert-interval-ms']),
    advertTtlMs: Number(values['advert-ttl-ms']),
    mode: values.mode
  })
  await worker.start()
  console.log(JSON.stringify({ ready: true, peer_id: worker.peerId, listen_addrs: worker.listenAddrs(), mode: values.mode, model: values.model, weights_sha256: weights, bad: BAD_MODES[values.mode] ?? null }))
  eventsToStdout = values['events-stdout']
  await new Promise(resolve => { process.once('SIGINT', resolve); process.once('SIGTERM', resolve) })
  event('stopping', worker.stats)
  await Promise.race([worker.stop(), sleep(3000)])
  return 0
}

main().then(code => process.exit(code), err => {
  console.log(JSON.stringify({ ready: false, error: String(err?.stack ?? err) }))
  process.exit(2)
})
