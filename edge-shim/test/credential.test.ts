// The session credential rules, ported case for case from the container's
// src/auth/credential.rs tests, plus what the Workers runtime adds (UTF-8-decoded header
// values, trailing whitespace kept).
import { describe, expect, it } from "vitest";
import { type Credential, credentialFrom, decodeCookieValue, rustTrim, SESSION_COOKIES } from "../src/credential";

const TOKEN = "6f1c1a3e-1c2d-4f5e-9a8b-7c6d5e4f3a2b";
const from = (headers: Record<string, string>): Credential => credentialFrom(new Headers(headers));
const cookie = (value: string) => from({ cookie: value });

describe("cookies", () => {
  it("finds each cookie name", () => {
    for (const name of SESSION_COOKIES) {
      expect(cookie(`other=1; ${name}=${TOKEN}`)).toEqual({ kind: "cookie", name, token: TOKEN });
    }
  });

  it("takes the names in priority order, not header order", () => {
    expect(cookie(`next-auth.session-token=b; __Secure-next-auth.session-token=a`)).toMatchObject({
      name: "__Secure-next-auth.session-token",
      token: "a",
    });
    expect(cookie(`authjs.session-token=b; __Secure-authjs.session-token=a`)).toMatchObject({
      name: "__Secure-authjs.session-token",
    });
  });

  it("lets the first occurrence of a name win", () => {
    expect(cookie("authjs.session-token=first; authjs.session-token=second")).toMatchObject({ token: "first" });
    // …even when the first is malformed and the second would be fine.
    expect(cookie(`authjs.session-token="x"; authjs.session-token=${TOKEN}`)).toEqual({ kind: "malformed", reason: "quoted" });
  });

  it("decodes the value exactly once", () => {
    expect(cookie("authjs.session-token=abc%2Bdef%3D")).toMatchObject({ token: "abc+def=" });
    expect(cookie("authjs.session-token=abc%252Bdef")).toEqual({ kind: "malformed", reason: "doubleEncoded" });
  });

  it("trims ASCII whitespace around names and values and skips pairs without =", () => {
    expect(cookie(` theme ;\tauthjs.session-token =  ${TOKEN}\t; x`)).toMatchObject({ token: TOKEN });
  });

  it("treats malformed values as errors", () => {
    const cases: [string, string][] = [
      ["authjs.session-token=", "empty"],
      ['authjs.session-token="abc"', "quoted"],
      ['authjs.session-token="abc', "quoted"],
      ['authjs.session-token=abc"', "quoted"],
      ["authjs.session-token=%FF%FE", "notUtf8"],
      ["authjs.session-token=a%20b", "invalidCharacters"],
      ["authjs.session-token=caf%C3%A9", "invalidCharacters"],
      [`authjs.session-token=${"a".repeat(300)}`, "tooLong"],
      [`authjs.session-token=${"%41".repeat(256)}`, "tooLong"],
    ];
    for (const [header, reason] of cases) expect(cookie(header), header).toEqual({ kind: "malformed", reason });
    expect(cookie(`authjs.session-token=${"%41".repeat(255)}`)).toMatchObject({ token: "A".repeat(255) });
    expect(cookie(`authjs.session-token=${"a".repeat(255)}`)).toMatchObject({ token: "a".repeat(255) });
    // A % that starts no escape stays literally (and is printable ASCII).
    expect(cookie("authjs.session-token=100%")).toMatchObject({ token: "100%" });
    expect(cookie("authjs.session-token=%zz%4")).toMatchObject({ token: "%zz%4" });
  });

  it("reads a U+FFFD (bytes that were not UTF-8 on the wire) as not UTF-8", () => {
    expect(cookie("authjs.session-token=abc\uFFFD")).toEqual({ kind: "malformed", reason: "notUtf8" });
    expect(cookie('authjs.session-token="abc\uFFFD')).toEqual({ kind: "malformed", reason: "quoted" });
    // Each U+FFFD stood for at least one byte: too long only if even that is over 765.
    expect(decodeCookieValue(`${"a".repeat(760)}${"\uFFFD".repeat(6)}`)).toEqual({ malformed: "tooLong" });
    expect(decodeCookieValue(`${"a".repeat(700)}${"\uFFFD".repeat(6)}`)).toEqual({ malformed: "notUtf8" });
  });

  it("sees valid UTF-8 that is not ASCII as invalid characters", () => {
    expect(cookie("authjs.session-token=café")).toEqual({ kind: "malformed", reason: "invalidCharacters" });
  });
});

describe("bearer", () => {
  it("wins over cookies and is not decoded", () => {
    expect(from({ cookie: `authjs.session-token=${TOKEN}`, authorization: "Bearer abc%2B" })).toEqual({
      kind: "bearer",
      token: "abc%2B",
    });
  });

  it("takes the scheme in any case and trims the token", () => {
    expect(from({ authorization: `bEaReR    ${TOKEN}` })).toEqual({ kind: "bearer", token: TOKEN });
    expect(from({ authorization: `Bearer ${TOKEN}\u00a0` })).toEqual({ kind: "bearer", token: TOKEN });
  });

  it("treats an empty or bad bearer token as malformed", () => {
    // "Bearer " arrives as "Bearer" from hyper; the edge trims like hyper, so this is no bearer.
    expect(from({ authorization: "Bearer " })).toEqual({ kind: "none" });
    expect(from({ authorization: "Bearer \u00a0" })).toEqual({ kind: "malformed", reason: "empty" });
    expect(from({ authorization: "Bearer a b" })).toEqual({ kind: "malformed", reason: "invalidCharacters" });
    expect(from({ authorization: `Bearer ${"b".repeat(256)}` })).toEqual({ kind: "malformed", reason: "tooLong" });
    expect(from({ authorization: "Bearer abc\uFFFD" })).toEqual({ kind: "malformed", reason: "notUtf8" });
  });

  it("leaves other schemes alone: cookies decide", () => {
    expect(from({ authorization: "Basic dXNlcjpwYXNz", cookie: "theme=dark; authjs.csrf-token=xyz" })).toEqual({ kind: "none" });
    expect(from({ authorization: "Basic dXNlcjpwYXNz", cookie: `authjs.session-token=${TOKEN}` })).toMatchObject({
      kind: "cookie",
    });
    expect(from({ authorization: "Bearer" })).toEqual({ kind: "none" });
  });

  it("is absent without any credential", () => {
    expect(from({})).toEqual({ kind: "none" });
    expect(from({ cookie: "Authjs.Session-Token=x" })).toEqual({ kind: "none" });
  });
});

describe("rustTrim", () => {
  it("trims Unicode White_Space like Rust's str::trim, which JS's trim does not match", () => {
    expect(rustTrim("\u0085 x \u3000")).toBe("x");
    expect(rustTrim("\ufeffx")).toBe("\ufeffx"); // BOM is not White_Space
  });
});
