// A PNG is whole (§10.3 "SHOULD check"): signature, every chunk's length and CRC, IHDR first, IEND last.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  return c >>> 0
})

function crc32 (buf) {
  let c = 0xffffffff
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])

export function checkPng (bytes) {
  const buf = Buffer.from(bytes)
  if (buf.length < 8 || !buf.subarray(0, 8).equals(SIGNATURE)) return { ok: false, error: 'no PNG signature' }
  let pos = 8
  const chunks = []
  let width = null
  let height = null
  while (pos < buf.length) {
    if (pos + 12 > buf.length) return { ok: false, error: `truncated chunk at ${pos}` }
    const len = buf.readUInt32BE(pos)
    const type = buf.subarray(pos + 4, pos + 8).toString('latin1')
    if (pos + 12 + len > buf.length) return { ok: false, error: `chunk ${type} runs past the end` }
    const crc = buf.readUInt32BE(pos + 8 + len)
    if (crc32(buf.subarray(pos + 4, pos + 8 + len)) !== crc) return { ok: false, error: `bad CRC in ${type}` }
    if (type === 'IHDR') { width = buf.readUInt32BE(pos + 8); height = buf.readUInt32BE(pos + 12) }
    chunks.push(type)
    pos += 12 + len
  }
  if (chunks[0] !== 'IHDR' || chunks[chunks.length - 1] !== 'IEND') return { ok: false, error: `chunks ${chunks.join(',')}` }
  return { ok: true, width, height, chunks: chunks.length }
}

// ------------------------------------------------------------------ encoding (for worker.mjs)

const chunk = (type, data) => {
  const head = Buffer.alloc(8)
  head.writeUInt32BE(data.length, 0)
  head.write(type, 4, 'latin1')
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0)
  return Buffer.concat([head, data, crc])
}

/**
 * An 8-bit RGB PNG (colour type 2, no interlace, filter 0 on every row) of `rgb`: width × height × 3
 * bytes, row by row. `deflate` is node:zlib's deflateSync (passed in so this file stays dependency-free).
 */
export function encodePng (width, height, rgb, deflate) {
  if (rgb.length !== width * height * 3) throw new Error(`${rgb.length} bytes are not ${width}x${height} RGB`)
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 2 // colour type: RGB
  const raw = Buffer.alloc(height * (1 + width * 3))
  for (let y = 0; y < height; y++) Buffer.from(rgb.buffer, rgb.byteOffset + y * width * 3, width * 3).copy(raw, y * (1 + width * 3) + 1)
  return Buffer.concat([SIGNATURE, chunk('IHDR', ihdr), chunk('IDAT', deflate(raw)), chunk('IEND', Buffer.alloc(0))])
}
