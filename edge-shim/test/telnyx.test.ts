// Telnyx webhook verification at the edge against a vector computed independently (Node's
// crypto, test/vectors/telnyx-webhook.json), with the container's rules and their order
// (src/providers/telnyx.rs `WebhookVerifier::verify`).
import { describe, expect, it } from "vitest";
import { decodeBase64Strict, importTelnyxKey, SIGNATURE_ERRORS, verifyTelnyx } from "../src/telnyx";
import vector from "./vectors/telnyx-webhook.json";

const body = new TextEncoder().encode(vector.body);
const now = Number(vector.timestamp);
const key = () => importTelnyxKey(vector.publicKey);

describe("decodeBase64Strict (the base64 crate's STANDARD engine)", () => {
  it("decodes padded standard base64", () => {
    expect(decodeBase64Strict("")).toEqual(new Uint8Array());
    expect(decodeBase64Strict("AA==")).toEqual(Uint8Array.of(0));
    expect(decodeBase64Strict("AAA=")).toEqual(Uint8Array.of(0, 0));
    expect(decodeBase64Strict("+/+/")).toEqual(Uint8Array.of(0xfb, 0xff, 0xbf));
    expect(decodeBase64Strict(vector.signature)).toHaveLength(64);
  });

  it("refuses what that engine refuses", () => {
    for (const bad of [
      "AA", // no padding
      "AAA", // no padding
      "A===", // too much padding
      "AA=A", // padding inside
      "AB==", // non-zero trailing bits (not canonical)
      "AAB=", // non-zero trailing bits
      "-_8=", // base64url alphabet
      "AA AA===",
      " AA==",
      "AA==\n",
      "=AAA",
    ]) {
      expect(decodeBase64Strict(bad), bad).toBeNull();
    }
  });
});

describe("importTelnyxKey", () => {
  it("takes base64 of the raw 32-byte key, surrounding whitespace ignored", async () => {
    await expect(importTelnyxKey(` ${vector.publicKey}\n`)).resolves.toBeTruthy();
  });

  it("rejects anything else", async () => {
    await expect(importTelnyxKey("not a key")).rejects.toThrow(/32-byte/);
    await expect(importTelnyxKey(btoa("x".repeat(31)))).rejects.toThrow(/32-byte/);
  });
});

describe("verifyTelnyx", () => {
  const verify = async (timestamp: string | null, signature: string | null, b = body, at = now) =>
    verifyTelnyx(await key(), timestamp, signature, b, at);

  it("accepts the vector", async () => {
    expect(await verify(vector.timestamp, vector.signature)).toBeNull();
  });

  it("accepts timestamps up to 300 s away, both ways", async () => {
    expect(await verify(vector.timestamp, vector.signature, body, now + 300)).toBeNull();
    expect(await verify(vector.timestamp, vector.signature, body, now - 300)).toBeNull();
  });

  it("rejects 301 s away, both ways, before looking at the signature", async () => {
    expect(await verify(vector.timestamp, vector.signature, body, now + 301)).toBe("stale");
    expect(await verify(vector.timestamp, vector.signature, body, now - 301)).toBe("stale");
    expect(await verify(vector.timestamp, "garbage", body, now + 301)).toBe("stale");
  });

  it("needs both headers", async () => {
    expect(await verify(null, vector.signature)).toBe("missing");
    expect(await verify(vector.timestamp, null)).toBe("missing");
    expect(await verify(null, null)).toBe("missing");
  });

  it("wants 1–12 ASCII digits for the timestamp", async () => {
    for (const ts of ["", "17641278OO", "-1764127800", "+1764127800", "1764127800.0", "1".repeat(13), "١٧٦٤"]) {
      expect(await verify(ts, vector.signature), ts).toBe("badTimestamp");
    }
  });

  it("wants strict base64 of exactly 64 bytes", async () => {
    expect(await verify(vector.timestamp, "not base64!")).toBe("badEncoding");
    expect(await verify(vector.timestamp, vector.signature.replace(/=+$/, ""))).toBe("badEncoding");
    expect(await verify(vector.timestamp, btoa("x".repeat(63)))).toBe("badEncoding");
    expect(await verify(vector.timestamp, btoa("x".repeat(65)))).toBe("badEncoding");
  });

  it("covers the timestamp and every body byte", async () => {
    const other = String(now + 1);
    expect(await verify(other, vector.signature)).toBe("invalid");
    const tampered = body.slice();
    tampered[10] = tampered[10]! ^ 1;
    expect(await verify(vector.timestamp, vector.signature, tampered)).toBe("invalid");
    expect(await verify(vector.timestamp, vector.signature, new Uint8Array([...body, 0x0a]))).toBe("invalid");
    expect(await verify(vector.timestamp, btoa(String.fromCharCode(...new Uint8Array(64))))).toBe("invalid");
  });

  it("quotes the container's messages", () => {
    expect(SIGNATURE_ERRORS).toEqual({
      missing: "missing telnyx-signature-ed25519 or telnyx-timestamp header",
      badTimestamp: "telnyx-timestamp is not unix seconds",
      stale: "telnyx-timestamp is more than 300 s away from now",
      badEncoding: "the signature is not base64 of 64 bytes",
      invalid: "the signature does not verify",
    });
  });
});
