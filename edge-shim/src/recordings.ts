// Owns recordings at the edge, statement for statement as the container's src/recordings/:
// the audio formats recognised by their first bytes (format.rs), the immutable object keys
// (keys.rs), the version reservation, its release and its `stored` mark (mod.rs), and
// streaming a body into R2 through the binding with flat memory (the edge's store.rs): the
// bytes are counted and hashed (SHA-256, and MD5 to check R2's ETag) as they pass, never
// collected.

import type { Db } from "./db";

export type AudioFormat = "wav" | "mp3" | "ogg" | "flac" | "webm";

/** format.rs SNIFF_LEN: enough bytes to recognise every format. */
export const SNIFF_LEN = 12;

export const CONTENT_TYPES: Record<AudioFormat, string> = {
  wav: "audio/wav",
  mp3: "audio/mpeg",
  ogg: "audio/ogg",
  flac: "audio/flac",
  webm: "audio/webm",
};

const startsWith = (bytes: Uint8Array, magic: number[]) => magic.every((b, i) => bytes[i] === b);
const ascii = (text: string) => [...text].map((c) => c.charCodeAt(0));

/** An MPEG-1/2/2.5 audio frame header (format.rs `is_mpeg_audio_frame`). */
function isMpegAudioFrame(h: Uint8Array): boolean {
  const sync = h[0] === 0xff && (h[1]! & 0xe0) === 0xe0;
  const version = (h[1]! >> 3) & 0b11;
  const layer = (h[1]! >> 1) & 0b11;
  const bitrate = h[2]! >> 4;
  const sampleRate = (h[2]! >> 2) & 0b11;
  return sync && version !== 0b01 && layer !== 0b00 && bitrate !== 0 && bitrate !== 0xf && sampleRate !== 0b11;
}

/** format.rs `AudioFormat::sniff`: the format of these leading bytes, if it is one of ours. */
export function sniffFormat(bytes: Uint8Array): AudioFormat | null {
  if (bytes.length >= 12 && startsWith(bytes, ascii("RIFF")) && startsWith(bytes.subarray(8), ascii("WAVE"))) return "wav";
  if (startsWith(bytes, ascii("OggS")) && bytes.length >= 4) return "ogg";
  if (startsWith(bytes, ascii("fLaC")) && bytes.length >= 4) return "flac";
  if (bytes.length >= 4 && startsWith(bytes, [0x1a, 0x45, 0xdf, 0xa3])) return "webm";
  if (bytes.length >= 10 && startsWith(bytes, ascii("ID3")) && bytes[3]! < 0xff && bytes[4]! < 0xff) return "mp3";
  if (bytes.length >= 4 && isMpegAudioFrame(bytes)) return "mp3";
  return null;
}

const SEGMENT = /^[A-Za-z0-9_-]{1,64}$/;

/** keys.rs `version_key`: `orgs/{org}/calls/{call or "none"}/recordings/{recording}/v{n}.{ext}`. */
export function versionKey(
  organisationId: string,
  callId: string | null,
  recordingId: string,
  version: number,
  format: AudioFormat,
): string {
  const segments = [organisationId, callId ?? "none", recordingId];
  const bad = segments.find((s) => !SEGMENT.test(s));
  if (bad !== undefined)
    throw new Error(`key segment ${JSON.stringify(bad)} is empty, too long, or has characters other than A-Z a-z 0-9 _ -`);
  if (!Number.isInteger(version) || version < 1) throw new Error("version must be 1 or more");
  return `orgs/${organisationId}/calls/${callId ?? "none"}/recordings/${recordingId}/v${version}.${format}`;
}

/** A UUIDv7 (`Uuid::now_v7`): 48 bits of Unix milliseconds, then random bits. */
export function uuidv7(now: number = Date.now()): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  let ms = now;
  for (let i = 5; i >= 0; i--) {
    bytes[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  bytes[6] = (bytes[6]! & 0x0f) | 0x70;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** mod.rs `by_telnyx_id`: the recording made for this Telnyx recording and its stored version. */
export async function byTelnyxId(db: Db, telnyxRecordingId: string): Promise<{ id: string; stored: number | null } | null> {
  const rows = await db.query<{ id: string; stored: number | null }>(
    `select r.id::text as id, (select max(version) from recording_versions v
                               where v.recording_id = r.id and v.status = 'stored') as stored
     from recordings r where r.telnyx_recording_id = $1`,
    [telnyxRecordingId],
  );
  return rows.rows[0] ?? null;
}

export type Target =
  | {
      kind: "new";
      organisationId: string;
      callId: string | null;
      source: string;
      telnyxRecordingId: string | null;
      channels: string | null;
      leg: string | null;
    }
  | { kind: "existing"; organisationId: string; recordingId: string };

export interface Reserved {
  recordingId: string;
  organisationId: string;
  callId: string | null;
  version: number;
  objectKey: string;
}

/**
 * mod.rs `reserve` (not direct: no staging key, no declared size): a new recording or the
 * next version of an existing one, in its own transaction under the recording's row lock.
 * Null when the existing recording is gone.
 */
export async function reserve(db: Db, target: Target, format: AudioFormat): Promise<Reserved | null> {
  await db.query("begin");
  try {
    let recordingId: string;
    let callId: string | null;
    if (target.kind === "new") {
      recordingId = uuidv7();
      callId = target.callId;
      await db.query(
        `insert into recordings (id, organisation_id, call_id, source, telnyx_recording_id, channels, leg)
         values ($1, $2, $3, $4, $5, $6, $7)`,
        [recordingId, target.organisationId, target.callId, target.source, target.telnyxRecordingId, target.channels, target.leg],
      );
    } else {
      const row = (
        await db.query<{ call_id: string | null }>(
          "select call_id::text as call_id from recordings where id = $1 and organisation_id = $2 for update",
          [target.recordingId, target.organisationId],
        )
      ).rows[0];
      if (row === undefined) {
        await db.query("rollback");
        return null;
      }
      recordingId = target.recordingId;
      callId = row.call_id;
    }
    const version = Number(
      (
        await db.query<{ v: number }>("select coalesce(max(version), 0) + 1 as v from recording_versions where recording_id = $1", [
          recordingId,
        ])
      ).rows[0]!.v,
    );
    const objectKey = versionKey(target.organisationId, callId, recordingId, version, format);
    await db.query(
      `insert into recording_versions (recording_id, version, object_key, content_type, size_bytes, staging_key)
       values ($1, $2, $3, $4, null, null)`,
      [recordingId, version, objectKey, CONTENT_TYPES[format]],
    );
    await db.query("commit");
    return { recordingId, organisationId: target.organisationId, callId, version, objectKey };
  } catch (err) {
    await db.query("rollback").catch(() => {});
    throw err;
  }
}

/** mod.rs `release`: forgets a version whose upload failed, and its recording if it has no other. */
export async function release(db: Db, recordingId: string, version: number): Promise<void> {
  await db.query("delete from recording_versions where recording_id = $1 and version = $2 and status = 'pending'", [recordingId, version]);
  await db.query(
    `delete from recordings r where id = $1
       and not exists (select 1 from recording_versions v where v.recording_id = r.id)`,
    [recordingId],
  );
}

/** mod.rs `mark_stored`. */
export async function markStored(db: Db, recordingId: string, version: number, size: number, sha256: string): Promise<void> {
  await db.query(
    `update recording_versions set status = 'stored', size_bytes = $3, sha256 = $4,
            staging_key = null, stored_at = now()
     where recording_id = $1 and version = $2`,
    [recordingId, version, size, sha256],
  );
}

// ---- Streaming into R2 ----------------------------------------------------------------------

/** store.rs StoreError, the cases the edge meets. `retry` says whether another attempt may help. */
export class StoreError extends Error {
  constructor(
    message: string,
    readonly retry: boolean,
  ) {
    super(message);
    this.name = "StoreError";
  }
}

export interface StoreLimits {
  /** RECORDINGS_MAX_BYTES. */
  maxBytes: number;
  /** RECORDINGS_PART_SIZE_BYTES: the multipart part size when the length is not announced. */
  partSize: number;
  /** Longest wait for the next chunk of the source (the container's 60 s). */
  idleMs: number;
}

export interface StoredObject {
  size: number;
  /** Lower-case hex SHA-256 of the bytes, as the container stores it. */
  sha256: string;
  /** 0 for a single streamed PUT, else the number of multipart parts. */
  parts: number;
  /** Most bytes this code held at once: the largest chunk in flight, or the part buffer. */
  peakHeldBytes: number;
}

/** One read of `reader`, or a retryable StoreError after `idleMs` without a byte. */
async function readWithin(reader: ReadableStreamDefaultReader<Uint8Array>, idleMs: number): Promise<ReadableStreamReadResult<Uint8Array>> {
  let timer: ReturnType<typeof setTimeout> | null = null;
  const idle = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StoreError(`no bytes arrived for ${idleMs} ms`, true)), idleMs);
  });
  const read = reader.read();
  // A read that loses the race settles when the reader is cancelled, maybe as a rejection.
  read.catch(() => {});
  try {
    return await Promise.race([read, idle]);
  } catch (err) {
    if (err instanceof StoreError) throw err;
    throw new StoreError(`reading the body failed: ${err instanceof Error ? err.message : String(err)}`, true);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Reads just enough of `reader` to recognise the format (store.rs `sniff`); nothing is stored
 * yet. Returns the bytes read so far with it. Throws a non-retryable StoreError for a body that
 * is empty or not audio.
 */
export async function sniffStream(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  limits: StoreLimits,
): Promise<{ format: AudioFormat; prefix: Uint8Array }> {
  let prefix = new Uint8Array(0);
  while (prefix.length < SNIFF_LEN) {
    const { done, value } = await readWithin(reader, limits.idleMs);
    if (done) break;
    const joined = new Uint8Array(prefix.length + value.length);
    joined.set(prefix);
    joined.set(value, prefix.length);
    prefix = joined;
    if (prefix.length > limits.maxBytes) throw new StoreError(`the body is larger than the limit of ${limits.maxBytes} bytes`, false);
  }
  if (prefix.length === 0) throw new StoreError("the body is empty", false);
  const format = sniffFormat(prefix);
  if (format === null) throw new StoreError("the body is not audio we accept (WAV, MP3, Ogg, FLAC, WebM)", false);
  return { format, prefix };
}

const hex = (buffer: ArrayBuffer) => [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");

/**
 * Streams `prefix` then the rest of `reader` to `key`. With a known `length` (the download's
 * Content-Length) it is one PUT of a FixedLengthStream the bytes pass through: R2 needs the
 * length up front, and the stream refuses a byte more or fewer. Without one it is a multipart
 * upload of `partSize` parts, one buffer reused. Either way the bytes are counted against
 * `maxBytes` and hashed as they pass; R2's ETag of a single PUT (the object's MD5) is checked
 * against the MD5 of what was sent. Returns only once the object is complete and checked; on
 * any failure nothing remains under `key`.
 */
/**
 * How much a streamed import with a Content-Length joins before hashing and handing it to R2
 * (ADR 0028: 256 MiB took 109 s in 4 KiB reads). Held at once: this plus one read.
 */
export const GATHER_BYTES = 1024 * 1024;

export async function streamToR2(
  bucket: R2Bucket,
  key: string,
  format: AudioFormat,
  prefix: Uint8Array,
  reader: ReadableStreamDefaultReader<Uint8Array>,
  length: number | null,
  limits: StoreLimits,
): Promise<StoredObject> {
  if (length !== null && length > limits.maxBytes) {
    await reader.cancel().catch(() => {});
    throw new StoreError(`the body is larger than the limit of ${limits.maxBytes} bytes`, false);
  }
  const sha256 = new crypto.DigestStream("SHA-256");
  const md5 = new crypto.DigestStream("MD5");
  // A failed import aborts both digests, which rejects their `digest` promises: observed here.
  sha256.digest.catch(() => {});
  md5.digest.catch(() => {});
  const shaWriter = sha256.getWriter();
  const md5Writer = md5.getWriter();
  let size = 0;
  let peakHeldBytes = 0;
  let pending: Uint8Array | null = prefix;
  /** What went wrong reading the source: R2's own error about the aborted stream says less. */
  let sourceError: unknown = null;

  /**
   * The next chunk, counted and hashed; null at the end. With `gather`, the runtime's reads
   * (4 KiB each in workerd) are joined until at least that many bytes: one digest write and
   * one R2 pull per gathered chunk instead of per read, which is where the time went (ADR
   * 0028), holding at most `gather` bytes plus one read.
   */
  async function next(gather = 0): Promise<Uint8Array | null> {
    let chunk: Uint8Array;
    if (pending !== null) {
      chunk = pending;
      pending = null;
    } else {
      const reads: Uint8Array[] = [];
      let gathered = 0;
      do {
        const { done, value } = await readWithin(reader, limits.idleMs);
        if (done) break;
        reads.push(value);
        gathered += value.byteLength;
        // Checked per read, so an oversized body stops at once, not a gathered chunk later.
        if (size + gathered > limits.maxBytes) throw new StoreError(`the body is larger than the limit of ${limits.maxBytes} bytes`, false);
        if (length !== null && size + gathered > length) throw new StoreError(`the body is longer than its ${length} bytes`, true);
      } while (gathered < gather);
      if (reads.length === 0) {
        if (length !== null && size !== length) {
          throw new StoreError(`the body ended after ${size} of its ${length} bytes`, true);
        }
        return null;
      }
      if (reads.length === 1) chunk = reads[0]!;
      else {
        chunk = new Uint8Array(gathered);
        let at = 0;
        for (const read of reads) {
          chunk.set(read, at);
          at += read.byteLength;
        }
      }
    }
    size += chunk.byteLength;
    peakHeldBytes = Math.max(peakHeldBytes, chunk.byteLength);
    if (size > limits.maxBytes) throw new StoreError(`the body is larger than the limit of ${limits.maxBytes} bytes`, false);
    if (length !== null && size > length) throw new StoreError(`the body is longer than its ${length} bytes`, true);
    await shaWriter.write(chunk);
    await md5Writer.write(chunk);
    return chunk;
  }

  const httpMetadata = { contentType: CONTENT_TYPES[format] };
  let parts = 0;
  try {
    if (length !== null) {
      // highWaterMark 0: a chunk is read from the download only when R2 asks for one.
      const source = new ReadableStream<Uint8Array>(
        {
          async pull(controller) {
            try {
              const chunk = await next(GATHER_BYTES);
              if (chunk === null) controller.close();
              else controller.enqueue(chunk);
            } catch (err) {
              sourceError = err;
              throw err;
            }
          },
          cancel(reason) {
            return reader.cancel(reason);
          },
        },
        { highWaterMark: 0 },
      );
      const fixed = new FixedLengthStream(length);
      // Both settle either way (a failed source aborts the PUT, a failed PUT cancels the
      // source); the source's failure is the one worth reporting.
      const [put, piped] = await Promise.allSettled([bucket.put(key, fixed.readable, { httpMetadata }), source.pipeTo(fixed.writable)]);
      if (piped.status === "rejected") throw piped.reason;
      if (put.status === "rejected") throw put.reason;
      const object = put.value;
      await Promise.all([shaWriter.close(), md5Writer.close()]);
      const sent = hex(await md5.digest);
      if (object === null || object.size !== size || object.etag.toLowerCase() !== sent) {
        throw new StoreError(`R2 stored ${object?.size} bytes with ETag ${object?.etag}, not ${size} bytes with MD5 ${sent}`, true);
      }
    } else {
      const upload = await bucket.createMultipartUpload(key, { httpMetadata });
      try {
        const buffer = new Uint8Array(limits.partSize);
        peakHeldBytes = limits.partSize;
        let filled = 0;
        const uploaded: R2UploadedPart[] = [];
        const flush = async () => {
          // The part is sent and awaited before the buffer fills again: one buffer, reused.
          uploaded.push(await upload.uploadPart(uploaded.length + 1, buffer.subarray(0, filled)));
          filled = 0;
        };
        for (let chunk = await next(); chunk !== null; chunk = await next()) {
          let offset = 0;
          while (offset < chunk.length) {
            const take = Math.min(limits.partSize - filled, chunk.length - offset);
            buffer.set(chunk.subarray(offset, offset + take), filled);
            filled += take;
            offset += take;
            if (filled === limits.partSize) await flush();
          }
        }
        if (filled > 0 || uploaded.length === 0) await flush();
        parts = uploaded.length;
        const object = await upload.complete(uploaded);
        await Promise.all([shaWriter.close(), md5Writer.close()]);
        if (object.size !== size) throw new StoreError(`R2 stored ${object.size} bytes, not ${size}`, true);
      } catch (err) {
        await upload.abort().catch(() => {});
        throw err;
      }
    }
  } catch (thrown) {
    const err = sourceError ?? thrown;
    await reader.cancel().catch(() => {});
    await Promise.all([shaWriter.abort(), md5Writer.abort()]).catch(() => {});
    // A PUT that completed before a check failed leaves an object; the key is this attempt's.
    await bucket.delete(key).catch(() => {});
    if (err instanceof StoreError) throw err;
    throw new StoreError(`storage: ${err instanceof Error ? err.message : String(err)}`, true);
  }
  return { size, sha256: hex(await sha256.digest), parts, peakHeldBytes };
}
