// lpnode wire format, written from docs/protocol.md alone: canonical msgpack (§4.2), a bounded
// decoder, job-stream frames (§6), peer ids (§3), signed envelopes (§5), job ids (§7.2).
//
// Values in JS: integers are Numbers (or BigInts past 2^53), float64 fields are `F64` wrappers
// (JS cannot tell 1.0 from 1, and the canonical form writes floats as `cb` always), str is string,
// bin is Uint8Array, nil is null, maps are plain objects (keys sorted on encoding).
import { createHash } from 'node:crypto'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'

export class F64 {
  constructor (value) {
    if (!Number.isFinite(value)) throw new Error(`float must be finite: ${value}`)
    this.value = value
  }
}
export const f64 = (v) => new F64(v)

// ------------------------------------------------------------------ canonical encoder (§4.2)

const te = new TextEncoder()
const td = new TextDecoder('utf-8', { fatal: true })

class Writer {
  constructor () { this.parts = []; this.length = 0 }
  bytes (b) { this.parts.push(b); this.length += b.length }
  u8 (...xs) { this.bytes(Uint8Array.from(xs)) }
  be (n, size, signed = false) {
    const b = new Uint8Array(size)
    const dv = new DataView(b.buffer)
    if (size === 1) signed ? dv.setInt8(0, Number(n)) : dv.setUint8(0, Number(n))
    else if (size === 2) signed ? dv.setInt16(0, Number(n)) : dv.setUint16(0, Number(n))
    else if (size === 4) signed ? dv.setInt32(0, Number(n)) : dv.setUint32(0, Number(n))
    else signed ? dv.setBigInt64(0, BigInt(n)) : dv.setBigUint64(0, BigInt(n))
    this.bytes(b)
  }
  concat () { return Buffer.concat(this.parts.map(p => Buffer.from(p.buffer, p.byteOffset, p.length))) }
}

const MAX_INT = (1n << 63n) - 1n

function writeInt (w, v) {
  const n = BigInt(v)
  if (n > MAX_INT || n < -MAX_INT) throw new Error(`integer out of range: ${v}`)
  if (n >= 0n) {
    if (n < 128n) w.u8(Number(n))
    else if (n < 256n) { w.u8(0xcc); w.be(n, 1) } else if (n < 65536n) { w.u8(0xcd); w.be(n, 2) } else if (n < 4294967296n) { w.u8(0xce); w.be(n, 4) } else { w.u8(0xcf); w.be(n, 8) }
  } else {
    if (n >= -32n) w.u8(Number(n) & 0xff)
    else if (n >= -128n) { w.u8(0xd0); w.be(n, 1, true) } else if (n >= -32768n) { w.u8(0xd1); w.be(n, 2, true) } else if (n >= -2147483648n) { w.u8(0xd2); w.be(n, 4, true) } else { w.u8(0xd3); w.be(n, 8, true) }
  }
}

function writeLen (w, n, fix, fixMax, c8, c16, c32) {
  if (fix !== null && n <= fixMax) w.u8(fix | n)
  else if (c8 !== null && n < 256) { w.u8(c8); w.be(n, 1) } else if (n < 65536) { w.u8(c16); w.be(n, 2) } else { w.u8(c32); w.be(n, 4) }
}

function writeValue (w, v) {
  if (v === null || v === undefined) w.u8(0xc0)
  else if (v === true) w.u8(0xc3)
  else if (v === false) w.u8(0xc2)
  else if (v instanceof F64) { w.u8(0xcb); const b = new Uint8Array(8); new DataView(b.buffer).setFloat64(0, v.value); w.bytes(b) } else if (typeof v === 'bigint') writeInt(w, v)
  else if (typeof v === 'number') {
    if (!Number.isInteger(v)) throw new Error(`non-integer Number ${v}: wrap floats in F64`)
    writeInt(w, v)
  } else if (typeof v === 'string') {
    const b = te.encode(v)
    writeLen(w, b.length, 0xa0, 31, 0xd9, 0xda, 0xdb)
    w.bytes(b)
  } else if (v instanceof Uint8Array) {
    writeLen(w, v.length, null, -1, 0xc4, 0xc5, 0xc6)
    w.bytes(v)
  } else if (Array.isArray(v)) {
    writeLen(w, v.length, 0x90, 15, null, 0xdc, 0xdd)
    for (const x of v) writeValue(w, x)
  } else if (typeof v === 'object') {
    // keys sorted by code point: JS's default sort compares UTF-16 code units, equal for ASCII keys
    const keys = Object.keys(v).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
    writeLen(w, keys.length, 0x80, 15, null, 0xde, 0xdf)
    for (const k of keys) { writeValue(w, k); writeValue(w, v[k]) }
  } else throw new Error(`cannot encode ${typeof v}`)
}

export function encode (value) {
  const w = new Writer()
  writeValue(w, value)
  return w.concat()
}

// ------------------------------------------------------------------ decoder

export class DecodeError extends Error {}

export function decode (bytes) {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)
  let pos = 0
  const need = (n) => { if (pos + n > buf.length) throw new DecodeError('truncated msgpack'); const p = pos; pos += n; return p }
  const int = (big) => (big <= BigInt(Number.MAX_SAFE_INTEGER) && big >= -BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big)
  const str = (n) => { const p = need(n); return td.decode(buf.subarray(p, p + n)) }
  const bin = (n) => { const p = need(n); return new Uint8Array(buf.subarray(p, p + n)) }
  const arr = (n, depth) => { const out = []; for (let i = 0; i < n; i++) out.push(val(depth + 1)); return out }
  const map = (n, depth) => {
    const out = {}
    for (let i = 0; i < n; i++) {
      const k = val(depth + 1)
      if (typeof k !== 'string') throw new DecodeError('map key is not a string')
      Object.defineProperty(out, k, { value: val(depth + 1), enumerable: true, writable: true, configurable: true })
    }
    return out
  }
  function val (depth) {
    if (depth > 64) throw new DecodeError('nested too deep')
    const t = buf[need(1)]
    if (t <= 0x7f) return t
    if (t >= 0xe0) return t - 256
    if ((t & 0xf0) === 0x80) return map(t & 0x0f, depth)
    if ((t & 0xf0) === 0x90) return arr(t & 0x0f, depth)
    if ((t & 0xe0) === 0xa0) return str(t & 0x1f)
    switch (t) {
      case 0xc0: return null
      case 0xc2: return false
      case 0xc3: return true
      case 0xc4: return bin(buf.readUInt8(need(1)))
      case 0xc5: return bin(buf.readUInt16BE(need(2)))
      case 0xc6: return bin(buf.readUInt32BE(need(4)))
      case 0xca: return new F64(buf.readFloatBE(need(4)))
      case 0xcb: return new F64(buf.readDoubleBE(need(8)))
      case 0xcc: return buf.readUInt8(need(1))
      case 0xcd: return buf.readUInt16BE(need(2))
      case 0xce: return buf.readUInt32BE(need(4))
      case 0xcf: return int(buf.readBigUInt64BE(need(8)))
      case 0xd0: return buf.readInt8(need(1))
      case 0xd1: return buf.readInt16BE(need(2))
      case 0xd2: return buf.readInt32BE(need(4))
      case 0xd3: return int(buf.readBigInt64BE(need(8)))
      case 0xd9: return str(buf.readUInt8(need(1)))
      case 0xda: return str(buf.readUInt16BE(need(2)))
      case 0xdb: return str(buf.readUInt32BE(need(4)))
      case 0xdc: return arr(buf.readUInt16BE(need(2)), depth)
      case 0xdd: return arr(buf.readUInt32BE(need(4)), depth)
      case 0xde: return map(buf.readUInt16BE(need(2)), depth)
      case 0xdf: return map(buf.readUInt32BE(need(4)), depth)
      default: throw new DecodeError(`unsupported msgpack type 0x${t.toString(16)}`)
    }
  }
  const out = val(0)
  if (pos !== buf.length) throw new DecodeError(`${buf.length - pos} trailing bytes`)
  return out
}

// ------------------------------------------------------------------ messages (§4.1, §4.5)

export const PROTOCOL_VERSION = 1
export const MAX_FRAME = {
  job_quote_request: 32768,
  job_quote: 2048,
  job_refusal: 4096,
  job_accept: 8192,
  job_progress: 1024,
  job_result: 278528,
  job_error: 4096,
  job_cancel: 1024,
  transfer_header: 512,
  signed: 1048576,
  receipt: 261632,
  advert: 65536
}
export const MAX_JOB_FRAME_BYTES = 278528
export const HARD_MAX_FRAME_BYTES = 16777216

export function encodeMessage (tag, body) { return encode([PROTOCOL_VERSION, tag, body]) }

/** Decodes [1, tag, body]; checks the version and, if `expected` is given, the tag. */
export function decodeMessage (bytes, expected = null, maxBytes = null) {
  if (maxBytes !== null && bytes.length > maxBytes) throw new DecodeError(`message of ${bytes.length} bytes over its bound ${maxBytes}`)
  const v = decode(bytes)
  if (!Array.isArray(v) || v.length !== 3) throw new DecodeError('a message is a 3-item array')
  const [version, tag, body] = v
  if (version !== PROTOCOL_VERSION) throw new DecodeError(`protocol version ${version}`)
  if (typeof tag !== 'string' || !(tag in MAX_FRAME)) throw new DecodeError(`unknown type tag ${tag}`)
  if (body === null || typeof body !== 'object' || Array.isArray(body) || body instanceof Uint8Array) throw new DecodeError('body is not a map')
  if (maxBytes === null && bytes.length > MAX_FRAME[tag]) throw new DecodeError(`${tag} of ${bytes.length} bytes over ${MAX_FRAME[tag]}`)
  if (expected !== null && !(Array.isArray(expected) ? expected : [expected]).includes(tag)) throw new DecodeError(`got ${tag}, expected ${expected}`)
  return { tag, body }
}

// ------------------------------------------------------------------ frames (§6)

export const KIND_MESSAGE = 0x01
export const KIND_DATA = 0x02

export function frame (kind, body) {
  const head = Buffer.alloc(5)
  head[0] = kind
  head.writeUInt32BE(body.length, 1)
  return Buffer.concat([head, Buffer.from(body.buffer, body.byteOffset, body.length)])
}
export const messageFrame = (tag, body) => frame(KIND_MESSAGE, encodeMessage(tag, body))

// ------------------------------------------------------------------ hashes, hex

export const sha256 = (b) => new Uint8Array(createHash('sha256').update(b).digest())
export const hex = (b) => Buffer.from(b).toString('hex')
export const unhex = (s) => new Uint8Array(Buffer.from(s.replace(/\s+/g, ''), 'hex'))
export const isHex64 = (s) => typeof s === 'string' && /^[0-9a-f]{64}$/.test(s)

// ------------------------------------------------------------------ peer ids (§3)

const B58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz'

export function base58encode (bytes) {
  let n = 0n
  for (const b of bytes) n = n * 256n + BigInt(b)
  let out = ''
  while (n > 0n) { out = B58[Number(n % 58n)] + out; n /= 58n }
  for (const b of bytes) { if (b !== 0) break; out = '1' + out }
  return out
}

export function base58decode (s) {
  let n = 0n
  for (const c of s) {
    const d = B58.indexOf(c)
    if (d < 0) throw new Error(`not base58: ${c}`)
    n = n * 58n + BigInt(d)
  }
  const out = []
  while (n > 0n) { out.unshift(Number(n % 256n)); n /= 256n }
  for (const c of s) { if (c !== '1') break; out.unshift(0) }
  return new Uint8Array(out)
}

const ID_PREFIX = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20]

export function peerIdBytes (publicKey) { return Uint8Array.from([...ID_PREFIX, ...publicKey]) }
export function peerIdFromPublicKey (publicKey) { return base58encode(peerIdBytes(publicKey)) }

/** The Ed25519 public key a peer id embeds; throws for anything but 00 24 08 01 12 20 + 32 bytes. */
export function publicKeyFromPeerId (peerId) {
  if (typeof peerId !== 'string' || peerId.length > 64) throw new Error('peer id not a str ≤ 64')
  const b = base58decode(peerId)
  if (b.length !== 38 || ID_PREFIX.some((x, i) => b[i] !== x)) throw new Error(`peer id ${peerId} embeds no Ed25519 key`)
  return b.subarray(6)
}

// ------------------------------------------------------------------ signed envelopes (§5)

export const DOMAIN = { job_quote: 'lpnode/job_quote/1', receipt: 'lpnode/receipt/1', advert: 'lpnode/advert/1' }

const signedBytes = (domain, payload) => Buffer.concat([Buffer.from(domain, 'utf8'), Buffer.from([0]), Buffer.from(payload)])

/** privateKey: a @libp2p/crypto Ed25519 private key. Returns the envelope message bytes. */
export async function sign (privateKey, innerTag, innerBody) {
  const payload = encodeMessage(innerTag, innerBody)
  const signature = await privateKey.sign(signedBytes(DOMAIN[innerTag], payload))
  return encodeMessage('signed', {
    payload,
    signature: new Uint8Array(signature),
    signer: peerIdFromPublicKey(privateKey.publicKey.raw)
  })
}

/**
 * Verifies a `signed` envelope expected to hold `innerTag` (§5 "Verifying"): size, decode, key from the
 * signer, signature under the inner type's domain, then the payload. Returns {signer, payload, body}.
 */
export async function openSigned (bytes, innerTag, envelopeBody = null) {
  const limit = MAX_FRAME[innerTag] + 256
  if (bytes !== null && bytes.length > limit) throw new Error(`envelope of ${bytes.length} bytes over ${limit}`)
  const env = envelopeBody ?? decodeMessage(bytes, 'signed', limit).body
  const { payload, signature, signer } = env
  if (!(payload instanceof Uint8Array) || !(signature instanceof Uint8Array) || typeof signer !== 'string') throw new Error('envelope fields of the wrong type')
  if (signature.length !== 64) throw new Error(`signature of ${signature.length} bytes`)
  const key = publicKeyFromRaw(publicKeyFromPeerId(signer))
  const ok = await key.verify(signedBytes(DOMAIN[innerTag], payload), signature)
  if (!ok) throw new Error(`bad signature under ${DOMAIN[innerTag]} by ${signer}`)
  const inner = decodeMessage(payload, innerTag, MAX_FRAME[innerTag])
  return { signer, payload, body: inner.body }
}

// ------------------------------------------------------------------ job spec and job id (§7)

const FLOAT_FIELDS = new Set(['guidance_scale', 'strength', 'noise_aug_strength', 'min_guidance_scale', 'max_guidance_scale'])
const PARAMS = ['text_to_image', 'image_to_image', 'image_to_video', 'upscale', 'frame_interpolation']

/**
 * A decoded JobSpec back into the values its canonical form is made of: float fields as F64 (a decoder
 * accepts an integer there), upscale's input_* defaults, unknown fields dropped (§15.1).
 */
export function normaliseSpec (spec) {
  const params = (p, name) => {
    if (p === null || p === undefined) return null
    const out = {}
    for (const [k, v] of Object.entries(p)) out[k] = FLOAT_FIELDS.has(k) && !(v instanceof F64) ? f64(Number(v)) : v
    if (name === 'upscale') for (const k of ['input_width', 'input_height', 'input_frames']) out[k] = out[k] ?? 0
    return out
  }
  const out = {
    pipeline: spec.pipeline,
    model_id: spec.model_id,
    seed: spec.seed,
    inputs: (spec.inputs ?? []).map(d => ({ name: d.name, media_type: d.media_type, size_bytes: d.size_bytes, sha256: d.sha256 })),
    output: { media_type: spec.output.media_type, max_total_bytes: spec.output.max_total_bytes }
  }
  for (const p of PARAMS) out[p] = params(spec[p], p)
  return out
}

export function jobIdPreimage (spec, requesterPeerId, nonce) {
  return encode(['lpnode/job-id/1', normaliseSpec(spec), requesterPeerId, nonce])
}
export const jobId = (spec, requesterPeerId, nonce) => hex(sha256(jobIdPreimage(spec, requesterPeerId, nonce)))

export function textToImageSpec ({ prompt, width, height, steps, seed, modelId = '', guidance = 1.5, negativePrompt = '', maxTotalBytes = 8388608 }) {
  return {
    pipeline: 'text-to-image',
    model_id: modelId,
    seed,
    inputs: [],
    output: { media_type: 'image/png', max_total_bytes: maxTotalBytes },
    text_to_image: {
      prompt,
      width,
      height,
      num_inference_steps: steps,
      guidance_scale: f64(guidance),
      negative_prompt: negativePrompt
    },
    image_to_image: null,
    image_to_video: null,
    upscale: null,
    frame_interpolation: null
  }
}

/** Deep equality of decoded values (F64 by value, bytes by content). */
export function deepEqual (a, b) {
  if (a instanceof F64 || b instanceof F64) return Number(a instanceof F64 ? a.value : a) === Number(b instanceof F64 ? b.value : b)
  if (a instanceof Uint8Array && b instanceof Uint8Array) return Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]))
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a).sort(); const kb = Object.keys(b).sort()
    return deepEqual(ka, kb) && ka.every(k => deepEqual(a[k], b[k]))
  }
  return a === b || (typeof a === 'bigint' || typeof b === 'bigint' ? BigInt(a) === BigInt(b) : false)
}

/** JSON-safe view of a decoded value (bytes as hex, F64 as number, BigInt as string). */
export function toJSON (v) {
  if (v instanceof F64) return v.value
  if (v instanceof Uint8Array) return hex(v)
  if (typeof v === 'bigint') return v.toString()
  if (Array.isArray(v)) return v.map(toJSON)
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toJSON(x)]))
  return v
}
