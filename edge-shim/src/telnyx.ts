// Owns verifying a Telnyx webhook signature at the edge, rule for rule as the container's
// `WebhookVerifier::verify` (src/providers/telnyx.rs; docs/PROVIDERS.md §1.1): both headers present,
// the timestamp 1–12 ASCII digits within ±300 s of now (checked before the signature), the
// signature strict padded base64 of exactly 64 bytes, Ed25519 over
// `${timestamp}|${raw body bytes}` with the raw 32-byte public key. WebCrypto does the
// Ed25519 verification. Nothing here parses the body.

export const SIGNATURE_HEADER = "telnyx-signature-ed25519";
export const TIMESTAMP_HEADER = "telnyx-timestamp";
export const TOLERANCE_SECS = 300;

/** The container's `SignatureError`, by its Display text (the 401 detail quotes it). */
export const SIGNATURE_ERRORS = {
  missing: "missing telnyx-signature-ed25519 or telnyx-timestamp header",
  badTimestamp: "telnyx-timestamp is not unix seconds",
  stale: "telnyx-timestamp is more than 300 s away from now",
  badEncoding: "the signature is not base64 of 64 bytes",
  invalid: "the signature does not verify",
} as const;
export type SignatureError = keyof typeof SIGNATURE_ERRORS;

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const VALUES = new Map([...ALPHABET].map((c, i) => [c, i]));

/**
 * Standard base64 as the Rust `base64` crate's STANDARD engine decodes it: padding required
 * (length a multiple of 4), `=` only at the end, no whitespace, and the unused bits of the
 * last symbol zero (canonical). Null for anything else.
 */
export function decodeBase64Strict(text: string): Uint8Array | null {
  if (text.length % 4 !== 0) return null;
  let pad = 0;
  if (text.endsWith("==")) pad = 2;
  else if (text.endsWith("=")) pad = 1;
  const body = text.slice(0, text.length - pad);
  const out = new Uint8Array((text.length / 4) * 3 - pad);
  let bits = 0;
  let acc = 0;
  let at = 0;
  for (const c of body) {
    const v = VALUES.get(c);
    if (v === undefined) return null; // includes a `=` before the end
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (acc >> bits) & 0xff;
    }
    acc &= (1 << bits) - 1;
  }
  // Leftover bits must be zero: "AB==" is canonical only if B's low 4 bits are 0.
  if (bits > 0 && acc !== 0) return null;
  return at === out.length ? out : null;
}

const keys = new Map<string, Promise<CryptoKey>>();

/**
 * Imports TELNYX_PUBLIC_KEY (base64 of the raw 32-byte key, surrounding whitespace ignored as
 * the container's `from_base64` does). Rejects when it is not exactly that.
 */
export function importTelnyxKey(publicKey: string): Promise<CryptoKey> {
  const trimmed = publicKey.trim();
  let key = keys.get(trimmed);
  if (key === undefined) {
    const raw = decodeBase64Strict(trimmed);
    key =
      raw === null || raw.length !== 32
        ? Promise.reject(new Error("TELNYX_PUBLIC_KEY is not base64 of a raw 32-byte Ed25519 key"))
        : crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
    keys.set(trimmed, key);
  }
  return key;
}

const TIMESTAMP = /^[0-9]{1,12}$/;
const encoder = new TextEncoder();

/**
 * Checks one delivery. `timestamp` and `signature` are the header values (null when absent),
 * `body` the untouched request body, `nowUnix` whole seconds. Null means verified.
 */
export async function verifyTelnyx(
  key: CryptoKey,
  timestamp: string | null,
  signature: string | null,
  body: Uint8Array,
  nowUnix: number,
): Promise<SignatureError | null> {
  if (timestamp === null || signature === null) return "missing";
  if (!TIMESTAMP.test(timestamp)) return "badTimestamp";
  if (Math.abs(nowUnix - Number(timestamp)) > TOLERANCE_SECS) return "stale";
  const sig = decodeBase64Strict(signature);
  if (sig === null || sig.length !== 64) return "badEncoding";
  const prefix = encoder.encode(`${timestamp}|`);
  const message = new Uint8Array(prefix.length + body.length);
  message.set(prefix, 0);
  message.set(body, prefix.length);
  return (await crypto.subtle.verify("Ed25519", key, sig, message)) ? null : "invalid";
}
