// Owns reading a webhook body exactly as the container's `serde_json::from_slice::<Value>`
// (serde_json 1.0.154, default features) reads it, and writing it back the way serde_json
// serialises that `Value`, because that text is what the container hands Postgres as `jsonb`.
// `JSON.parse` + `JSON.stringify` would not do: numbers keep their serde type (u64 / i64 /
// f64: `1.0` stays `1.0`, `-0` becomes `-0.0`, `1e2` becomes `100.0`), and f64s are computed
// with serde's own (not always correctly rounded) algorithm, ported below operation for
// operation.
//
// Anything serde_json would reject — or anything this port is not certain about (lone
// surrogate escapes, nesting at serde's recursion limit, bytes that are not UTF-8, a BOM) —
// returns null: the caller defers to the container, whose error message is the reference.

/** A parsed JSON value. Objects are Maps (duplicate keys: the last wins, as in serde and jsonb). */
export type Json = null | boolean | string | JsonNumber | Json[] | JsonObject;
export type JsonObject = Map<string, Json>;
/** A number as serde_json holds it, with the exact text serde_json writes for it. */
export interface JsonNumber {
  kind: "u64" | "i64" | "f64";
  text: string;
}

export interface Parsed {
  value: Json;
  /** serde_json's serialisation of `value` (keys in first-seen order; jsonb sorts them). */
  canonical: string;
}

/** serde_json's recursion limit: the 128th nested array/object is an error. */
const MAX_DEPTH = 127;
const U64_MAX = (1n << 64n) - 1n;
const I32_MAX = 2147483647;
/** serde_json's POW10 table: the f64 literals 1e0 … 1e308 (each correctly rounded). */
const POW10: number[] = Array.from({ length: 309 }, (_, i) => Number(`1e${i}`));

class Reject extends Error {}

export function parseSerdeJson(bytes: Uint8Array): Parsed | null {
  let text: string;
  try {
    // fatal: invalid UTF-8 is a serde error; ignoreBOM: keep a BOM so it is rejected like serde does.
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    return null;
  }
  try {
    const parser = new Parser(text);
    const value = parser.document();
    return { value, canonical: serialise(value) };
  } catch (err) {
    if (err instanceof Reject) return null;
    throw err;
  }
}

class Parser {
  private at = 0;
  constructor(private readonly s: string) {}

  document(): Json {
    const value = this.value(0);
    this.ws();
    if (this.at !== this.s.length) throw new Reject();
    return value;
  }

  private ws(): void {
    while (this.at < this.s.length) {
      const c = this.s.charCodeAt(this.at);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) this.at++;
      else break;
    }
  }

  private peek(): string | undefined {
    return this.s[this.at];
  }

  private value(depth: number): Json {
    this.ws();
    const c = this.peek();
    switch (c) {
      case "{":
        return this.object(depth + 1);
      case "[":
        return this.array(depth + 1);
      case '"':
        return this.string();
      case "t":
        return this.literal("true", true);
      case "f":
        return this.literal("false", false);
      case "n":
        return this.literal("null", null);
      case "-":
        this.at++;
        return this.number(false);
      default:
        if (c !== undefined && c >= "0" && c <= "9") return this.number(true);
        throw new Reject();
    }
  }

  private literal<T extends Json>(word: string, value: T): T {
    if (this.s.startsWith(word, this.at)) {
      this.at += word.length;
      return value;
    }
    throw new Reject();
  }

  private object(depth: number): JsonObject {
    if (depth > MAX_DEPTH) throw new Reject();
    this.at++; // {
    const map: JsonObject = new Map();
    this.ws();
    if (this.peek() === "}") {
      this.at++;
      return map;
    }
    for (;;) {
      this.ws();
      if (this.peek() !== '"') throw new Reject();
      const key = this.string();
      this.ws();
      if (this.peek() !== ":") throw new Reject();
      this.at++;
      const v = this.value(depth);
      map.delete(key); // last wins; re-insert so the order is the order of the kept values
      map.set(key, v);
      this.ws();
      const next = this.peek();
      this.at++;
      if (next === "}") return map;
      if (next !== ",") throw new Reject();
    }
  }

  private array(depth: number): Json[] {
    if (depth > MAX_DEPTH) throw new Reject();
    this.at++; // [
    const out: Json[] = [];
    this.ws();
    if (this.peek() === "]") {
      this.at++;
      return out;
    }
    for (;;) {
      out.push(this.value(depth));
      this.ws();
      const next = this.peek();
      this.at++;
      if (next === "]") return out;
      if (next !== ",") throw new Reject();
    }
  }

  private string(): string {
    this.at++; // opening quote
    let out = "";
    for (;;) {
      if (this.at >= this.s.length) throw new Reject();
      const code = this.s.charCodeAt(this.at);
      if (code === 0x22) {
        this.at++;
        return out;
      }
      if (code < 0x20) throw new Reject(); // control character inside a string
      if (code !== 0x5c) {
        out += this.s[this.at++];
        continue;
      }
      this.at++; // backslash
      const e = this.s[this.at++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case "\\":
          out += "\\";
          break;
        case "/":
          out += "/";
          break;
        case "b":
          out += "\b";
          break;
        case "f":
          out += "\f";
          break;
        case "n":
          out += "\n";
          break;
        case "r":
          out += "\r";
          break;
        case "t":
          out += "\t";
          break;
        case "u": {
          const unit = this.hex4();
          if (unit >= 0xdc00 && unit <= 0xdfff) throw new Reject(); // lone trailing surrogate
          if (unit >= 0xd800 && unit <= 0xdbff) {
            // Must be followed by \uDC00–\uDFFF; anything else is a serde error (or lenient
            // handling we do not reproduce): defer.
            if (this.s[this.at] !== "\\" || this.s[this.at + 1] !== "u") throw new Reject();
            this.at += 2;
            const low = this.hex4();
            if (low < 0xdc00 || low > 0xdfff) throw new Reject();
            out += String.fromCharCode(unit, low);
          } else {
            out += String.fromCharCode(unit);
          }
          break;
        }
        default:
          throw new Reject();
      }
    }
  }

  private hex4(): number {
    const digits = this.s.slice(this.at, this.at + 4);
    if (!/^[0-9A-Fa-f]{4}$/.test(digits)) throw new Reject();
    this.at += 4;
    return parseInt(digits, 16);
  }

  private digit(): number | null {
    const c = this.s.charCodeAt(this.at);
    return c >= 0x30 && c <= 0x39 ? c - 0x30 : null;
  }

  // ---- numbers: serde_json de.rs parse_integer / parse_number / parse_decimal /
  // parse_exponent / parse_long_integer / parse_decimal_overflow / f64_from_parts ----

  private number(positive: boolean): JsonNumber {
    const first = this.digit();
    if (first === null) throw new Reject();
    this.at++;
    if (first === 0) {
      if (this.digit() !== null) throw new Reject(); // leading zero
      return this.afterInteger(positive, 0n);
    }
    let significand = BigInt(first);
    for (;;) {
      const d = this.digit();
      if (d === null) return this.afterInteger(positive, significand);
      if (overflowsU64(significand, d)) return f64(this.longInteger(positive, significand));
      this.at++;
      significand = significand * 10n + BigInt(d);
    }
  }

  private afterInteger(positive: boolean, significand: bigint): JsonNumber {
    const c = this.peek();
    if (c === ".") return f64(this.decimal(positive, significand, 0));
    if (c === "e" || c === "E") return f64(this.exponent(positive, significand, 0));
    if (positive) return { kind: "u64", text: significand.toString() };
    // `(significand as i64).wrapping_neg()`: -0 and magnitudes over 2^63 become f64.
    if (significand === 0n || significand > 1n << 63n) return f64(-Number(significand));
    return { kind: "i64", text: `-${significand.toString()}` };
  }

  private decimal(positive: boolean, significand: bigint, exponentBefore: number): number {
    this.at++; // .
    let after = 0;
    for (;;) {
      const d = this.digit();
      if (d === null) break;
      if (overflowsU64(significand, d)) {
        // parse_decimal_overflow: ignore the remaining digits.
        while (this.digit() !== null) this.at++;
        const c = this.peek();
        const exponent = exponentBefore + after;
        return c === "e" || c === "E" ? this.exponent(positive, significand, exponent) : this.fromParts(positive, significand, exponent);
      }
      this.at++;
      significand = significand * 10n + BigInt(d);
      after -= 1;
    }
    if (after === 0) throw new Reject(); // no digit after the point
    const exponent = exponentBefore + after;
    const c = this.peek();
    return c === "e" || c === "E" ? this.exponent(positive, significand, exponent) : this.fromParts(positive, significand, exponent);
  }

  private exponent(positive: boolean, significand: bigint, startingExp: number): number {
    this.at++; // e or E
    let positiveExp = true;
    if (this.peek() === "+") this.at++;
    else if (this.peek() === "-") {
      positiveExp = false;
      this.at++;
    }
    const first = this.digit();
    if (first === null) throw new Reject();
    this.at++;
    let exp = first;
    for (;;) {
      const d = this.digit();
      if (d === null) break;
      this.at++;
      if (exp > Math.floor(I32_MAX / 10) || (exp === Math.floor(I32_MAX / 10) && d > I32_MAX % 10)) {
        // parse_exponent_overflow: +huge with a non-zero significand is out of range.
        if (significand !== 0n && positiveExp) throw new Reject();
        while (this.digit() !== null) this.at++;
        return positive ? 0 : -0;
      }
      exp = exp * 10 + d;
    }
    const finalExp = positiveExp ? saturatingI32(startingExp + exp) : saturatingI32(startingExp - exp);
    return this.fromParts(positive, significand, finalExp);
  }

  /** parse_long_integer: more integer digits than a u64 holds; each one scales by ten. */
  private longInteger(positive: boolean, significand: bigint): number {
    let exponent = 0;
    for (;;) {
      const d = this.digit();
      if (d !== null) {
        this.at++;
        exponent += 1;
        continue;
      }
      const c = this.peek();
      if (c === ".") return this.decimal(positive, significand, exponent);
      if (c === "e" || c === "E") return this.exponent(positive, significand, exponent);
      return this.fromParts(positive, significand, exponent);
    }
  }

  /** f64_from_parts without `float_roundtrip`: one IEEE multiply or divide by a POW10 entry. */
  private fromParts(positive: boolean, significand: bigint, exponent: number): number {
    let f = Number(significand); // u64 as f64: round to nearest, ties to even
    for (;;) {
      const index = Math.abs(exponent);
      const pow = index <= 308 ? POW10[index] : undefined;
      if (pow !== undefined) {
        if (exponent >= 0) {
          f *= pow;
          if (!Number.isFinite(f)) throw new Reject(); // NumberOutOfRange
        } else {
          f /= pow;
        }
        break;
      }
      if (f === 0) break;
      if (exponent >= 0) throw new Reject();
      f /= 1e308;
      exponent += 308;
    }
    return positive ? f : -f;
  }
}

function overflowsU64(significand: bigint, digit: number): boolean {
  const limit = U64_MAX / 10n;
  return significand >= limit && (significand > limit || BigInt(digit) > U64_MAX % 10n);
}

function saturatingI32(n: number): number {
  return Math.max(-I32_MAX - 1, Math.min(I32_MAX, n));
}

function f64(value: number): JsonNumber {
  return { kind: "f64", text: formatF64(value) };
}

/**
 * How serde_json writes a finite f64 (zmij 1.0 `format_finite`): the shortest round-trip
 * digits; scientific exponent e in -5..=15 is written positionally (an integral value gets
 * `.0`), anything else as `d.ddde+X` / `de-X`; zero is `0.0` / `-0.0`.
 */
export function formatF64(value: number): string {
  if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
  const sign = value < 0 ? "-" : "";
  // toExponential() without an argument gives the shortest digits that round-trip.
  const [mantissa, exp] = Math.abs(value).toExponential().split("e") as [string, string];
  const digits = mantissa.replace(".", "");
  const e = Number(exp);
  if (e >= -5 && e <= 15) {
    if (digits.length - 1 <= e) return `${sign}${digits}${"0".repeat(e + 1 - digits.length)}.0`;
    if (e >= 0) return `${sign}${digits.slice(0, e + 1)}.${digits.slice(e + 1)}`;
    return `${sign}0.${"0".repeat(-e - 1)}${digits}`;
  }
  const fraction = digits.length > 1 ? `.${digits.slice(1)}` : "";
  return `${sign}${digits[0]}${fraction}e${e < 0 ? "-" : "+"}${Math.abs(e)}`;
}

/** serde_json's serialisation (its string escaping is JSON.stringify's for valid strings). */
export function serialise(value: Json): string {
  if (value === null) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(serialise).join(",")}]`;
  if (value instanceof Map) {
    const parts: string[] = [];
    for (const [k, v] of value) parts.push(`${JSON.stringify(k)}:${serialise(v)}`);
    return `{${parts.join(",")}}`;
  }
  return value.text;
}

/** `Value::get(key)`: the member of an object, undefined for anything else. */
export function member(value: Json | undefined, key: string): Json | undefined {
  return value instanceof Map ? value.get(key) : undefined;
}
