// Owns keeping personal data and credentials out of the edge's logs (shadow reports, deferral
// and error lines): emails, phone numbers, bearer credentials, media stream tokens and other
// long opaque tokens are replaced by placeholders, and compared body values are logged only
// when they are short lower-case words (statuses, enums) or small numbers — never names.

const STREAM_TOKEN = /\/media\/telnyx\/[^/?#\s"']+/g;
const EMAIL = /[^\s@"'<>(),;:/]+@[^\s@"'<>(),;:/]+\.[A-Za-z]{2,}/g;
const CREDENTIAL = /\b(Bearer|Basic)\s+[^\s"',;]+/gi;
// E.164 (+ and 7–15 digits, separators allowed) or any run of 10 or more digits.
const PHONE = /\+\d[\d\s().-]{5,18}\d|\b\d{10,}\b/g;
const OPAQUE = /[A-Za-z0-9_-]{32,}/g;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const SAFE_WORD = /^[a-z][a-z0-9_.-]{0,23}$/;

/**
 * `text` with credentials and personal data replaced. `keepIds` keeps UUID-shaped values
 * (resource ids in a path); elsewhere a UUID may be a session token and is replaced too.
 */
export function scrubText(text: string, options: { keepIds?: boolean } = {}): string {
  return text
    .replace(STREAM_TOKEN, "/media/telnyx/[redacted]")
    .replace(CREDENTIAL, (_m, scheme: string) => `${scheme} [redacted]`)
    .replace(EMAIL, "[email]")
    .replace(OPAQUE, (m) => (options.keepIds && UUID.test(m) ? m : "[token]"))
    .replace(PHONE, "[phone]");
}

/** A request path for a log line: ids kept, tokens and personal data not. */
export const scrubPath = (path: string): string => scrubText(path, { keepIds: true });

/**
 * A JSON value for a log line: lower-case words up to 24 characters (statuses, enums),
 * booleans, null and numbers below a million as they are; anything else described by kind
 * and size only, so no name, email, phone number or token is ever written.
 */
export function describeValue(value: unknown): unknown {
  if (value === null || typeof value === "boolean") return value;
  if (typeof value === "number") return Math.abs(value) < 1_000_000 ? value : "[number]";
  if (typeof value === "string") return SAFE_WORD.test(value) ? value : `[string of ${value.length} chars]`;
  if (Array.isArray(value)) return `[array of ${value.length}]`;
  if (typeof value === "object") return `{object with ${Object.keys(value).length} keys}`;
  return `[${typeof value}]`;
}
