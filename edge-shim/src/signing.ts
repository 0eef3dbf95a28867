// Owns the edge → container request signature, the one scheme the Rust container verifies
// (src/http/forwarded.rs; with EDGE_SHARED_SECRET set it refuses unsigned requests):
//
//   x-edge-timestamp:      unix seconds, decimal
//   x-edge-content-sha256: hex SHA-256 of the body as forwarded (of no bytes when there is
//                          none), or UNSIGNED-PAYLOAD for a body too large to buffer
//   x-edge-signature: "v2=" + hex(HMAC-SHA256(EDGE_SHARED_SECRET,
//       `v2\n${timestamp}\n${METHOD}\n${pathAndQuery}\n${xForwardedFor}\n${xForwardedProto}\n${xForwardedHost}\n${contentSha256}`))
//
// pathAndQuery is the path the container receives plus "?query" when there is one; a missing
// forwarded value is the empty string. This module only computes; proxy.ts passes the exact
// values it puts on the wire. test/vectors/edge-signature.json is the vector both sides test.
// docs/adr/0021-edge-signature-enforced.md says why the body hash and the one exception.

export const TIMESTAMP_HEADER = "x-edge-timestamp";
export const SIGNATURE_HEADER = "x-edge-signature";
export const CONTENT_SHA256_HEADER = "x-edge-content-sha256";
export const SIGNATURE_VERSION = "v2";
/** The content hash of a streamed body the edge did not buffer (above HTTP_BODY_LIMIT_BYTES). */
export const UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD";

/** The signed facts of one forwarded request. */
export interface SignedFields {
  /** Unix seconds as a decimal string, exactly as sent in `x-edge-timestamp`. */
  timestamp: string;
  /** The HTTP method as sent (fetch upper-cases the standard ones). */
  method: string;
  /** Path plus `?query` when the URL has one, as the container receives it. */
  pathAndQuery: string;
  /** Values of `x-forwarded-for`, `-proto`, `-host`; empty string when not sent. */
  forwardedFor: string;
  forwardedProto: string;
  forwardedHost: string;
  /** `x-edge-content-sha256`: hex SHA-256 of the body, or UNSIGNED_PAYLOAD. */
  contentSha256: string;
}

const encoder = new TextEncoder();
const keys = new Map<string, Promise<CryptoKey>>();

function hmacKey(secret: string): Promise<CryptoKey> {
  let key = keys.get(secret);
  if (key === undefined) {
    key = crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    keys.set(secret, key);
  }
  return key;
}

/** The exact byte string that is MACed (before UTF-8 encoding). */
export function canonicalMessage(f: SignedFields): string {
  return [
    SIGNATURE_VERSION,
    f.timestamp,
    f.method,
    f.pathAndQuery,
    f.forwardedFor,
    f.forwardedProto,
    f.forwardedHost,
    f.contentSha256,
  ].join("\n");
}

/** `v2=<64 lowercase hex digits>` for these fields under `secret`. */
export async function sign(secret: string, fields: SignedFields): Promise<string> {
  const mac = await crypto.subtle.sign("HMAC", await hmacKey(secret), encoder.encode(canonicalMessage(fields)));
  return `${SIGNATURE_VERSION}=${toHex(new Uint8Array(mac))}`;
}

/** Lowercase hex SHA-256 of `body`: the `x-edge-content-sha256` of a buffered body. */
export async function contentSha256(body: ArrayBuffer | Uint8Array): Promise<string> {
  return toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", body)));
}

/** Current unix time in whole seconds, as the decimal string the header carries. */
export function unixSeconds(nowMs: number = Date.now()): string {
  return String(Math.floor(nowMs / 1000));
}

function toHex(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}
