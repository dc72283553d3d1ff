// worker.mjs's "model": a PNG drawn from the seed, deterministically, and the fingerprints a receipt carries
// (§10.1 `pixel_sha256`, `phash`, `dhash`). Not a diffusion model; the requester cannot tell, nor need it.
import { deflateSync } from 'node:zlib'
import { sha256 } from './codec.mjs'
import { encodePng } from './png.mjs'

/** xorshift32 from 32 bits of sha256(seed, prompt, size): deterministic, fast enough for 1024². */
function rng (seedBytes) {
  let x = Buffer.from(seedBytes).readUInt32BE(0) || 1
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x }
}

/** The RGB pixels (row by row) of the picture for this seed/prompt/size: a gradient, rings and some noise. */
export function render ({ seed, prompt = '', width, height }) {
  const h = sha256(Buffer.from(`lpnode-js-worker/${BigInt(seed)}/${width}x${height}/${prompt}`))
  const next = rng(h)
  const rgb = new Uint8Array(width * height * 3)
  const [cx, cy] = [h[4] / 255 * width, h[5] / 255 * height]
  const ring = 4 + (h[6] % 24)
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3
      const d = Math.hypot(x - cx, y - cy)
      const band = Math.floor(d / ring) % 2 === 0 ? 60 : 0
      const noise = next() & 15
      rgb[i] = (h[7] + Math.floor(x * 255 / width) + band + noise) & 0xff
      rgb[i + 1] = (h[8] + Math.floor(y * 255 / height) + noise) & 0xff
      rgb[i + 2] = (h[9] + band * 2 + ((x ^ y) & 31)) & 0xff
    }
  }
  return rgb
}

// Perceptual fingerprints (§10.1 `phash`, `dhash`): the doc says "64-bit perceptual hash" and "64-bit
// difference hash", 16 lowercase hex digits, nothing more. These follow the usual definitions (the
// `imagehash` library's): grey, shrink, compare. See jsworker_doc_gaps.md.
function grey (rgb, width, height) {
  const g = new Float64Array(width * height)
  for (let p = 0; p < width * height; p++) g[p] = 0.299 * rgb[3 * p] + 0.587 * rgb[3 * p + 1] + 0.114 * rgb[3 * p + 2]
  return g
}

function shrink (g, width, height, w, h) { // box filter
  const out = new Float64Array(w * h)
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const x0 = Math.floor(x * width / w); const x1 = Math.max(x0 + 1, Math.floor((x + 1) * width / w))
      const y0 = Math.floor(y * height / h); const y1 = Math.max(y0 + 1, Math.floor((y + 1) * height / h))
      let s = 0; let n = 0
      for (let yy = y0; yy < Math.min(y1, height); yy++) for (let xx = x0; xx < Math.min(x1, width); xx++) { s += g[yy * width + xx]; n++ }
      out[y * w + x] = n ? s / n : 0
    }
  }
  return out
}

const bitsToHex = (bits) => {
  let s = ''
  for (let i = 0; i < 64; i += 4) s += ((bits[i] << 3) | (bits[i + 1] << 2) | (bits[i + 2] << 1) | bits[i + 3]).toString(16)
  return s
}

export function dhash (rgb, width, height) {
  const s = shrink(grey(rgb, width, height), width, height, 9, 8)
  const bits = []
  for (let y = 0; y < 8; y++) for (let x = 0; x < 8; x++) bits.push(s[y * 9 + x + 1] > s[y * 9 + x] ? 1 : 0)
  return bitsToHex(bits)
}

export function phash (rgb, width, height) {
  const N = 32
  const s = shrink(grey(rgb, width, height), width, height, N, N)
  const dct1 = (v) => Array.from({ length: N }, (_, k) => v.reduce((acc, x, n) => acc + x * Math.cos(Math.PI * k * (2 * n + 1) / (2 * N)), 0))
  const rows = Array.from({ length: N }, (_, y) => dct1(Array.from(s.subarray(y * N, y * N + N))))
  const low = []
  for (let k = 0; k < 8; k++) {
    const col = dct1(rows.map(r => r[k]))
    for (let j = 0; j < 8; j++) low[j * 8 + k] = col[j]
  }
  const sorted = [...low].sort((a, b) => a - b)
  const median = (sorted[31] + sorted[32]) / 2
  return bitsToHex(low.map(v => (v > median ? 1 : 0)))
}

export function renderPng (opts) {
  const rgb = render(opts)
  return { png: encodePng(opts.width, opts.height, rgb, deflateSync), rgb }
}
