// The edge → container signature against fixed vectors computed outside this code (Node's
// crypto.createHmac); the Rust side tests its verifier against the same JSON file.
import { describe, expect, it } from "vitest";
import { canonicalMessage, contentSha256, sign, UNSIGNED_PAYLOAD, unixSeconds } from "../src/signing";
import vector from "./vectors/edge-signature.json";

describe("edge signature", () => {
  it("reproduces the shared vector, body hash included", async () => {
    expect(await contentSha256(new TextEncoder().encode(vector.body))).toBe(vector.contentSha256);
    expect(await sign(vector.secret, vector)).toBe(vector.signature);
  });

  it("signs empty forwarded values as empty lines, with a UTF-8 secret", async () => {
    const fields = {
      timestamp: "1700000000",
      method: "GET",
      pathAndQuery: "/healthz",
      forwardedFor: "",
      forwardedProto: "",
      forwardedHost: "",
      contentSha256: await contentSha256(new Uint8Array(0)),
    };
    expect(fields.contentSha256).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect(canonicalMessage(fields)).toBe(`v2\n1700000000\nGET\n/healthz\n\n\n\n${fields.contentSha256}`);
    expect(await sign("s3cr\u00e9t", fields)).toBe("v2=ec618823eb262ddfa23e63c75f1b1c4f637683ed73c5167cd1e27efc52c5289d");
  });

  it("changes when any signed field changes", async () => {
    const fields = ["timestamp", "method", "pathAndQuery", "forwardedFor", "forwardedProto", "forwardedHost", "contentSha256"] as const;
    for (const field of fields) {
      const tampered = { ...vector, [field]: `${vector[field]}x` };
      expect(await sign(vector.secret, tampered), field).not.toBe(vector.signature);
    }
    expect(await sign(`${vector.secret}x`, vector)).not.toBe(vector.signature);
    expect(await sign(vector.secret, { ...vector, contentSha256: UNSIGNED_PAYLOAD })).not.toBe(vector.signature);
  });

  it("is v2= followed by 64 lowercase hex digits", async () => {
    expect(await sign("k", { ...vector })).toMatch(/^v2=[0-9a-f]{64}$/);
  });

  it("uses whole unix seconds", () => {
    expect(unixSeconds(1764133200999)).toBe("1764133200");
    expect(unixSeconds(0)).toBe("0");
  });
});
