// Owns how much of a request body the edge holds in memory: HTTP_BODY_LIMIT_BYTES (the
// container's variable, default 1 MiB) and a bounded read that stops at it, so no body —
// with or without Content-Length — makes the Worker buffer more than that.

/** The container's default HTTP_BODY_LIMIT_BYTES. */
export const DEFAULT_BODY_LIMIT = 1024 * 1024;

/** HTTP_BODY_LIMIT_BYTES as the container reads it (unset or invalid: 1 MiB). */
export function bodyLimit(raw: string | undefined): number {
  const n = Number((raw ?? "").trim());
  return Number.isSafeInteger(n) && n > 0 ? n : DEFAULT_BODY_LIMIT;
}

/** Content-Length when it is a plain non-negative integer, else null. */
export function declaredLength(headers: Headers): number | null {
  const value = headers.get("content-length");
  if (value === null || !/^\d{1,15}$/.test(value.trim())) return null;
  return Number(value.trim());
}

/**
 * Reads `stream` into one buffer of at most `limit` bytes; null (and the stream cancelled)
 * as soon as it would exceed it.
 */
export async function readBounded(stream: ReadableStream<Uint8Array>, limit: number): Promise<Uint8Array | null> {
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      await reader.cancel("body over the edge's limit");
      return null;
    }
    chunks.push(value);
  }
  const body = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return body;
}
