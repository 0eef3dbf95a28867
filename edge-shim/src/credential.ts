// Owns finding the Auth.js session credential in a request, rule for rule as the container's
// src/auth/credential.rs (docs/ARCHITECTURE.md, "Auth"): `Authorization: Bearer <token>` first (scheme
// case-insensitive, the token not URL-decoded); else the session cookies in priority order,
// the first occurrence of a name winning, its value URL-decoded exactly once. A malformed
// credential is an error (401), never "anonymous".
//
// One thing differs from reading bytes in Rust: the Workers runtime hands header values over
// as UTF-8-decoded strings, replacing each invalid byte sequence with U+FFFD, and joins
// repeated headers with ", ". A U+FFFD in a credential is therefore read as "the client sent
// bytes that are not UTF-8" — the container's answer to those bytes. (Repeated headers reach
// the container joined the same way when the shim proxies, so that rule is the runtime's.)

import { headerValue } from "./respond";

/** The container's default `AUTH_COOKIE_NAMES`, highest priority first. */
export const SESSION_COOKIES = [
  "__Secure-authjs.session-token",
  "authjs.session-token",
  "__Secure-next-auth.session-token",
  "next-auth.session-token",
] as const;

/** `sessionToken` is varchar(255). */
export const MAX_TOKEN_LEN = 255;
/** A longer raw cookie value cannot decode to a valid token (×3 for `%XX`). */
export const MAX_RAW_COOKIE_LEN = MAX_TOKEN_LEN * 3;

/** The container's `Malformed` variants, by their Display text. */
export const MALFORMED = {
  empty: "the session credential is empty",
  tooLong: "the session credential is too long",
  quoted: "the session cookie is quoted",
  doubleEncoded: "the session cookie is percent-encoded more than once",
  notUtf8: "the session credential is not valid UTF-8",
  invalidCharacters: "the session credential contains characters a token never has",
} as const;
export type Malformed = keyof typeof MALFORMED;

export type Credential =
  | { kind: "bearer"; token: string }
  | { kind: "cookie"; name: string; token: string }
  | { kind: "none" }
  | { kind: "malformed"; reason: Malformed };

const REPLACEMENT = "\uFFFD";
const encoder = new TextEncoder();

function utf8Length(text: string): number {
  return encoder.encode(text).length;
}

/** `check_token`: 1–255 bytes of printable ASCII (0x21–0x7E). */
function checkToken(token: string): Malformed | null {
  if (token === "") return "empty";
  if (utf8Length(token) > MAX_TOKEN_LEN) return "tooLong";
  if (!/^[\x21-\x7e]+$/.test(token)) return "invalidCharacters";
  return null;
}

/** Rust's `str::trim`: Unicode White_Space (not JS's set, which adds U+FEFF and lacks U+0085). */
const RUST_WHITESPACE =
  "\t\n\v\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000";

export function rustTrim(text: string): string {
  let start = 0;
  let end = text.length;
  while (start < end && RUST_WHITESPACE.includes(text[start]!)) start++;
  while (end > start && RUST_WHITESPACE.includes(text[end - 1]!)) end--;
  return text.slice(start, end);
}

/** `u8::is_ascii_whitespace`: space, \t, \n, \x0C, \r (not \x0B). */
function asciiTrim(text: string): string {
  return text.replace(/^[ \t\n\f\r]+/, "").replace(/[ \t\n\f\r]+$/, "");
}

/** `%` followed by two hex digits. */
function containsPercentEscape(text: string): boolean {
  return /%[0-9A-Fa-f]{2}/.test(text);
}

/** percent_encoding's `percent_decode`: `%XX` becomes the byte; any other `%` stays. */
function percentDecode(bytes: Uint8Array): Uint8Array {
  const out: number[] = [];
  const hex = (b: number | undefined): number | null => {
    if (b === undefined) return null;
    if (b >= 0x30 && b <= 0x39) return b - 0x30;
    if (b >= 0x41 && b <= 0x46) return b - 0x37;
    if (b >= 0x61 && b <= 0x66) return b - 0x57;
    return null;
  };
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (b === 0x25) {
      const hi = hex(bytes[i + 1]);
      const lo = hex(bytes[i + 2]);
      if (hi !== null && lo !== null) {
        out.push(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out.push(b);
  }
  return Uint8Array.from(out);
}

/** `decode_cookie_value`: the raw cookie value decoded exactly once, or why it is malformed. */
export function decodeCookieValue(raw: string): { token: string } | { malformed: Malformed } {
  if (raw === "") return { malformed: "empty" };
  if (raw.includes(REPLACEMENT)) {
    // The raw bytes were not UTF-8. Each U+FFFD stands for 1–3 raw bytes: the raw value is
    // too long only if even the shortest reading is; a leading/trailing quote survives.
    const shortest = utf8Length(raw) - 2 * raw.split(REPLACEMENT).length + 2;
    if (shortest > MAX_RAW_COOKIE_LEN) return { malformed: "tooLong" };
    if (raw.startsWith('"') || raw.endsWith('"')) return { malformed: "quoted" };
    return { malformed: "notUtf8" };
  }
  const bytes = encoder.encode(raw);
  if (bytes.length > MAX_RAW_COOKIE_LEN) return { malformed: "tooLong" };
  if (raw.startsWith('"') || raw.endsWith('"')) return { malformed: "quoted" };
  let decoded: string;
  try {
    decoded = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(percentDecode(bytes));
  } catch {
    return { malformed: "notUtf8" };
  }
  if (containsPercentEscape(decoded)) return { malformed: "doubleEncoded" };
  const bad = checkToken(decoded);
  return bad === null ? { token: decoded } : { malformed: bad };
}

/** Every `name=value` pair of the Cookie header, in order, trimmed; pairs without `=` skipped. */
function cookiePairs(cookie: string): [string, string][] {
  const pairs: [string, string][] = [];
  for (const part of cookie.split(";")) {
    const pair = asciiTrim(part);
    const eq = pair.indexOf("=");
    if (eq < 0) continue;
    pairs.push([asciiTrim(pair.slice(0, eq)), asciiTrim(pair.slice(eq + 1))]);
  }
  return pairs;
}

/** `from_headers`: the request's credential, none, or why it is malformed. */
export function credentialFrom(headers: Headers, cookieNames: readonly string[] = SESSION_COOKIES): Credential {
  const authorization = headerValue(headers, "authorization");
  if (authorization !== null && /^bearer /i.test(authorization.slice(0, 7))) {
    const rest = authorization.slice(7);
    if (rest.includes(REPLACEMENT)) return { kind: "malformed", reason: "notUtf8" };
    const token = rustTrim(rest);
    const bad = checkToken(token);
    return bad === null ? { kind: "bearer", token } : { kind: "malformed", reason: bad };
    // Another scheme (Basic, say) is not ours to judge: fall through to cookies.
  }
  const cookie = headerValue(headers, "cookie");
  if (cookie !== null) {
    const pairs = cookiePairs(cookie);
    for (const name of cookieNames) {
      const first = pairs.find(([n]) => n === name);
      if (first !== undefined) {
        const decoded = decodeCookieValue(first[1]);
        return "token" in decoded ? { kind: "cookie", name, token: decoded.token } : { kind: "malformed", reason: decoded.malformed };
      }
    }
  }
  return { kind: "none" };
}
