// One /lpnode/job/1 stream as frames (§6): writes through a pushable sink, reads with bounds and timeouts.
import { pushable } from 'it-pushable'
import { KIND_DATA, KIND_MESSAGE, decodeMessage, frame, messageFrame } from './codec.mjs'

export const JOB_PROTOCOL = '/lpnode/job/1'

export class StreamEnded extends Error {}
export class FrameTimeout extends Error {}
export class BadFrame extends Error {}

export class JobStream {
  constructor (stream) {
    this.stream = stream
    this.out = pushable()
    this.sinking = stream.sink(this.out).catch(err => { this.sinkError = err })
    this.source = stream.source[Symbol.asyncIterator]()
    this.held = []
    this.heldLength = 0
    this.ended = false
    this.pending = null // a source.next() still outstanding after a timeout
  }

  write (bytes) { this.out.push(bytes) }
  send (tag, body) { this.write(messageFrame(tag, body)) }
  sendData (bytes) { this.write(frame(KIND_DATA, bytes)) }

  /** Our write side closed (a Yamux FIN): what §8.6 asks of the requester when done. */
  async close () {
    this.out.end()
    await Promise.race([this.sinking, new Promise(resolve => setTimeout(resolve, 2000))])
    try { await this.stream.close() } catch {}
  }

  reset () { try { this.stream.abort(new Error('reset by the requester')) } catch {} }

  async _pull (deadline) {
    if (this.ended) throw new StreamEnded('stream ended')
    this.pending ??= this.source.next()
    const left = deadline - Date.now()
    let timer
    const timeout = new Promise((resolve, reject) => { timer = setTimeout(() => reject(new FrameTimeout(`nothing within ${left} ms`)), Math.max(0, left)) })
    try {
      const { value, done } = await Promise.race([this.pending, timeout])
      this.pending = null
      if (done) { this.ended = true; throw new StreamEnded('stream ended') }
      const bytes = value.subarray()
      this.held.push(Buffer.from(bytes))
      this.heldLength += bytes.length
    } catch (err) {
      if (!(err instanceof FrameTimeout)) {
        this.pending = null
        if (!(err instanceof StreamEnded)) { this.ended = true; throw new StreamEnded(`stream failed: ${err.message ?? err}`) }
      }
      throw err
    } finally { clearTimeout(timer) }
  }

  async readExactly (n, deadline) {
    while (this.heldLength < n) await this._pull(deadline)
    const all = Buffer.concat(this.held)
    this.held = [all.subarray(n)]
    this.heldLength = all.length - n
    return all.subarray(0, n)
  }

  /**
   * The next frame: {kind, body}. `maxBody` is checked against the header before any body byte is
   * read (§6). `startMs`: wait for the frame to start; a started frame gets 30 s to finish.
   */
  async readFrame (maxBody, startMs = 60000) {
    const head = await this.readExactly(5, Date.now() + startMs)
    const kind = head[0]
    const length = head.readUInt32BE(1)
    if (kind !== KIND_MESSAGE && kind !== KIND_DATA) throw new BadFrame(`frame of unknown kind 0x${kind.toString(16)}`)
    if (length > maxBody) throw new BadFrame(`frame of ${length} bytes over the ${maxBody} expected`)
    const body = await this.readExactly(length, Date.now() + 30000)
    return { kind, body }
  }

  async readMessage (maxBody, startMs, expected = null) {
    const { kind, body } = await this.readFrame(maxBody, startMs)
    if (kind !== KIND_MESSAGE) throw new BadFrame(`a DATA frame where a message was due`)
    return { ...decodeMessage(body, expected), raw: body }
  }
}
