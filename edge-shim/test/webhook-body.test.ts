// Reading a webhook body as the container does: serde_json's parser and number types, the
// envelope fields of `WebhookEvent::parse`, and chrono's RFC 3339 + tokio-postgres truncation
// for occurred_at. Expected texts are what the container stores (checked against it by the
// parity suite, which writes the same bodies through both).
import { describe, expect, it } from "vitest";
import { DEFER, occurredAtForPostgres } from "../src/rfc3339";
import { formatF64, parseSerdeJson } from "../src/serde-json";
import { parseEvent } from "../src/webhooks";

const parse = (text: string | Uint8Array) => parseSerdeJson(typeof text === "string" ? new TextEncoder().encode(text) : text);
const canonical = (text: string) => parse(text)?.canonical ?? null;

describe("numbers as serde_json holds and writes them", () => {
  it("keeps u64 and i64 exact and turns everything else into f64", () => {
    expect(canonical("[0,7,18446744073709551615,-1,-9223372036854775808]")).toBe("[0,7,18446744073709551615,-1,-9223372036854775808]");
    expect(canonical("[18446744073709551616,-9223372036854775809]")).toBe("[1.8446744073709552e+19,-9.223372036854776e+18]");
    expect(canonical("[1.0,-0,-0.0,1e2,1.50,0.1,1E-7,2.5e+20,100000000000000000.0]")).toBe(
      "[1.0,-0.0,-0.0,100.0,1.5,0.1,1e-7,2.5e+20,1e+17]",
    );
  });

  it("writes f64 like zmij: positional for exponents -5..=15, `.0` on integral values", () => {
    expect(formatF64(0)).toBe("0.0");
    expect(formatF64(-0)).toBe("-0.0");
    expect(formatF64(1e15)).toBe("1000000000000000.0");
    expect(formatF64(1e16)).toBe("1e+16");
    expect(formatF64(123456.789)).toBe("123456.789");
    expect(formatF64(0.00001234)).toBe("0.00001234");
    expect(formatF64(0.000001234)).toBe("1.234e-6");
    expect(formatF64(5e-324)).toBe("5e-324");
    expect(formatF64(1.7976931348623157e308)).toBe("1.7976931348623157e+308");
  });

  it("computes f64 with serde's algorithm (one multiply or divide by 10^e)", () => {
    // serde_json without float_roundtrip: 123456789012345678901234567890 = 12345678901234567890 * 10^10.
    // biome-ignore lint/correctness/noPrecisionLoss: the rounding of this literal is what the test reproduces
    expect(canonical("123456789012345678901234567890")).toBe(formatF64(12345678901234567890 * 1e10));
    expect(canonical("1234567.0e-3")).toBe(formatF64(12345670 / 1e4));
  });

  it("rejects what serde rejects (the caller defers to the container)", () => {
    for (const bad of [
      "",
      " ",
      "01",
      "1.",
      ".5",
      "+1",
      "1e",
      "1e+",
      "-",
      "1e400",
      "[1,]",
      '{"a":1,}',
      "{1:2}",
      "nul",
      "tru",
      '"\\x"',
      '"a\u0001"',
      "[1] x",
      "\ufeff[]",
    ]) {
      expect(parse(bad), JSON.stringify(bad)).toBeNull();
    }
  });

  it("defers lone surrogates, deep nesting and bytes that are not UTF-8", () => {
    expect(parse('"\\ud800"')).toBeNull();
    expect(parse('"\\udc00"')).toBeNull();
    expect(parse('"\\ud800\\u0041"')).toBeNull();
    expect(parse(Uint8Array.of(0x22, 0xff, 0x22))).toBeNull();
    expect(parse(Uint8Array.of(0xef, 0xbb, 0xbf, 0x5b, 0x5d))).toBeNull(); // BOM
    expect(parse("[".repeat(127) + "]".repeat(127))).not.toBeNull();
    expect(parse("[".repeat(128) + "]".repeat(128))).toBeNull();
  });

  it("keeps strings, escapes and the last of duplicate keys", () => {
    expect(canonical('{"a":1,"b":"x","a":{"c":"\\ud83d\\udcde \\u00e9\\/\\n"}}')).toBe('{"b":"x","a":{"c":"📞 é/\\n"}}');
    expect(canonical(' \t\n{ "__proto__" : [ true , false , null ] }\r\n')).toBe('{"__proto__":[true,false,null]}');
  });
});

describe("WebhookEvent::parse", () => {
  const event = (text: string) => parseEvent(parse(text)!.value);

  it("picks id, event_type (underscores to dots) and occurred_at", () => {
    expect(event('{"data":{"id":"e1","event_type":"call_answered","occurred_at":"2026-11-26T03:30:00.076316Z"}}')).toEqual({
      id: "e1",
      eventType: "call.answered",
      occurredAt: "2026-11-26T03:30:00.076316Z",
    });
  });

  it("names what is missing, with the container's words", () => {
    expect(event('{"id":"e1"}')).toEqual({ error: "missing data" });
    expect(event("[1]")).toEqual({ error: "missing data" });
    expect(event('{"data":null}')).toEqual({ error: "missing data.id" });
    expect(event('{"data":{"id":""}}')).toEqual({ error: "missing data.id" });
    expect(event('{"data":{"id":7,"event_type":"x"}}')).toEqual({ error: "missing data.id" });
    expect(event('{"data":{"id":"e1"}}')).toEqual({ error: "missing data.event_type" });
  });

  it("measures the limits in UTF-8 bytes (id ≤ 200, event_type ≤ 100)", () => {
    expect(event(`{"data":{"id":"${"é".repeat(100)}","event_type":"x"}}`)).toMatchObject({ eventType: "x" });
    expect(event(`{"data":{"id":"${"é".repeat(100)}x","event_type":"x"}}`)).toEqual({ error: "missing data.id" });
    expect(event(`{"data":{"id":"e","event_type":"${"t".repeat(101)}"}}`)).toEqual({ error: "missing data.event_type" });
  });

  it("stores NULL for an occurred_at that is not an RFC 3339 string", () => {
    expect(event('{"data":{"id":"e","event_type":"x","occurred_at":1764127800}}')).toMatchObject({ occurredAt: null });
    expect(event('{"data":{"id":"e","event_type":"x","occurred_at":"yesterday"}}')).toMatchObject({ occurredAt: null });
  });
});

describe("occurred_at: chrono's RFC 3339, truncated to microseconds toward 2000", () => {
  it("accepts chrono's spellings", () => {
    expect(occurredAtForPostgres("2026-11-26T03:30:00Z")).toBe("2026-11-26T03:30:00.000000Z");
    expect(occurredAtForPostgres("2026-11-26t05:30:00.5+02:00")).toBe("2026-11-26T03:30:00.500000Z");
    expect(occurredAtForPostgres("2026-11-26 01:30:00\u221202:00")).toBe("2026-11-26T03:30:00.000000Z");
    expect(occurredAtForPostgres("2026-11-26T03:30:00z")).toBe("2026-11-26T03:30:00.000000Z");
    expect(occurredAtForPostgres("2024-02-29T23:59:59.999999999-23:59")).toBe("2024-03-01T23:58:59.999999Z");
  });

  it("truncates sub-microsecond digits (after chrono drops digits past nine)", () => {
    expect(occurredAtForPostgres("2026-11-26T03:30:00.0763169999Z")).toBe("2026-11-26T03:30:00.076316Z");
    // Before 2000 "toward zero" means up: 0.5 µs before 2000 is 2000 itself.
    expect(occurredAtForPostgres("1999-12-31T23:59:59.9999995Z")).toBe("2000-01-01T00:00:00.000000Z");
    expect(occurredAtForPostgres("1969-07-20T20:17:40.0000015Z")).toBe("1969-07-20T20:17:40.000002Z");
  });

  it("rejects what chrono rejects (the container stores NULL)", () => {
    for (const bad of [
      "2026-11-26T03:30Z",
      "2026-11-26T03:30:00",
      "2026-11-26T03:30:00.Z",
      "2026-02-29T00:00:00Z",
      "2026-13-01T00:00:00Z",
      "2026-11-26T24:00:00Z",
      "2026-11-26T03:30:61Z",
      "2026-11-26T03:30:00+0200",
      "2026-11-26T03:30:00+02",
      "2026-11-26T03:30:00+02:60",
      "2026-11-26T03:30:00+24:00",
      "2026-11-26T03:30:00Z ",
      "2026-11-26X03:30:00Z",
      "+2026-11-26T03:30:00Z",
      "26/11/2026 03:30",
    ]) {
      expect(occurredAtForPostgres(bad), bad).toBeNull();
    }
  });

  it("defers leap seconds and instants outside years 1–9999", () => {
    expect(occurredAtForPostgres("2016-12-31T23:59:60.5Z")).toBe(DEFER);
    expect(occurredAtForPostgres("0000-06-01T00:00:00Z")).toBe(DEFER);
    expect(occurredAtForPostgres("9999-12-31T23:00:00-05:00")).toBe(DEFER);
    expect(occurredAtForPostgres("0001-01-01T00:00:00Z")).toBe("0001-01-01T00:00:00.000000Z");
  });
});
