// Owns the edge → container request signature, the one scheme the Rust container verifies:
//
//   x-edge-timestamp: unix seconds, decimal
//   x-edge-signature: "v1=" + hex(HMAC-SHA256(EDGE_SHARED_SECRET,
//       `${timestamp}\n${METHOD}\n${pathAndQuery}\n${xForwardedFor}\n${xForwardedProto}\n${xForwardedHost}`))
//
// pathAndQuery is the path the container receives plus "?query" when there is one; a missing
// forwarded value is the empty string. This module only computes; proxy.ts passes the exact
// values it puts on the wire. test/vectors/edge-signature.json is the vector both sides test.

export const TIMESTAMP_HEADER = "x-edge-timestamp";
export const SIGNATURE_HEADER = "x-edge-signature";
export const SIGNATURE_VERSION = "v1";

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
  return [f.timestamp, f.method, f.pathAndQuery, f.forwardedFor, f.forwardedProto, f.forwardedHost].join("\n");
}

/** `v1=<64 lowercase hex digits>` for these fields under `secret`. */
export async function sign(secret: string, fields: SignedFields): Promise<string> {
  const mac = await crypto.subtle.sign("HMAC", await hmacKey(secret), encoder.encode(canonicalMessage(fields)));
  return `${SIGNATURE_VERSION}=${toHex(new Uint8Array(mac))}`;
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
