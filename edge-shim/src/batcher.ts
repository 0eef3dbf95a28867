// Owns cutting a browser's audio into AssemblyAI-sized chunks, byte for byte as the container's
// `ByteBatcher` (src/media/audio.rs) does: every chunk is exactly MEDIA_BATCH_MS of audio, and
// the remainder, flushed on Terminate or when the browser leaves, is cut to a whole sample and
// padded with silence to AssemblyAI's 50 ms minimum (docs/PROVIDERS.md §2.1: 50–1000 ms per
// message, else error 3007 and the session dies).

/** AssemblyAI's limits on one binary message, in milliseconds of audio. */
export const MIN_CHUNK_MS = 50;
export const MAX_CHUNK_MS = 1000;
/** The container's default MEDIA_BATCH_MS. */
export const DEFAULT_BATCH_MS = 100;

export type Encoding = "pcm_s16le" | "pcm_mulaw";

/** Bytes per sample of an encoding (mono). */
export function sampleBytes(encoding: Encoding): number {
  return encoding === "pcm_mulaw" ? 1 : 2;
}

/** The byte that is silence: 0x00 for signed 16-bit PCM, 0xFF for µ-law. */
export function silenceByte(encoding: Encoding): number {
  return encoding === "pcm_mulaw" ? 0xff : 0x00;
}

/** `StreamParams::bytes_per_ms`: whole kHz × bytes per sample. */
export function bytesPerMs(encoding: Encoding, sampleRate: number): number {
  return Math.floor(sampleRate / 1000) * sampleBytes(encoding);
}

export class ByteBatcher {
  private buffer = new Uint8Array(0);
  readonly batchBytes: number;
  readonly minBytes: number;
  readonly maxBytes: number;
  private readonly sampleBytes: number;

  /** `batchMs` is clamped to 50–1000 as the container clamps it. */
  constructor(
    batchMs: number,
    bytesPerMs: number,
    sampleBytes: number,
    private readonly silence: number,
  ) {
    const ms = Math.min(Math.max(batchMs, MIN_CHUNK_MS), MAX_CHUNK_MS);
    this.batchBytes = ms * bytesPerMs;
    this.minBytes = MIN_CHUNK_MS * bytesPerMs;
    this.maxBytes = MAX_CHUNK_MS * bytesPerMs;
    this.sampleBytes = Math.max(sampleBytes, 1);
  }

  static for(encoding: Encoding, sampleRate: number, batchMs: number): ByteBatcher {
    return new ByteBatcher(batchMs, bytesPerMs(encoding, sampleRate), sampleBytes(encoding), silenceByte(encoding));
  }

  /** Bytes held back, waiting for a full chunk. */
  get pending(): number {
    return this.buffer.length;
  }

  /** Appends audio; returns the complete chunks (each exactly `batchBytes`), oldest first. */
  push(bytes: Uint8Array): Uint8Array[] {
    const joined = new Uint8Array(this.buffer.length + bytes.length);
    joined.set(this.buffer, 0);
    joined.set(bytes, this.buffer.length);
    const ready: Uint8Array[] = [];
    let offset = 0;
    while (joined.length - offset >= this.batchBytes) {
      ready.push(joined.slice(offset, offset + this.batchBytes));
      offset += this.batchBytes;
    }
    this.buffer = joined.slice(offset);
    return ready;
  }

  /**
   * The remainder, cut to a whole sample and padded with silence to 50 ms (never over
   * 1000 ms); null when nothing is held. Empties the batcher.
   */
  flush(): Uint8Array | null {
    if (this.buffer.length === 0) return null;
    const whole = this.buffer.length - (this.buffer.length % this.sampleBytes);
    const length = Math.min(Math.max(whole, this.minBytes), this.maxBytes);
    const tail = new Uint8Array(length).fill(this.silence);
    tail.set(this.buffer.subarray(0, Math.min(whole, length)), 0);
    this.buffer = new Uint8Array(0);
    return tail;
  }
}
