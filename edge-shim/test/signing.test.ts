// The edge → container signature against fixed vectors computed outside this code (Node's
// crypto.createHmac); the Rust side tests its verifier against the same JSON file.
import { describe, expect, it } from "vitest";
import { canonicalMessage, sign, unixSeconds } from "../src/signing";
import vector from "./vectors/edge-signature.json";

describe("edge signature", () => {
  it("reproduces the shared vector", async () => {
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
    };
    expect(canonicalMessage(fields)).toBe("1700000000\nGET\n/healthz\n\n\n");
    expect(await sign("s3cr\u00e9t", fields)).toBe("v1=d50c24083e4a7b3e647e8555ff23b2966862c30b2999795e7ec7f837a0740ac5");
  });

  it("changes when any signed field changes", async () => {
    const fields = ["timestamp", "method", "pathAndQuery", "forwardedFor", "forwardedProto", "forwardedHost"] as const;
    for (const field of fields) {
      const tampered = { ...vector, [field]: `${vector[field]}x` };
      expect(await sign(vector.secret, tampered), field).not.toBe(vector.signature);
    }
    expect(await sign(`${vector.secret}x`, vector)).not.toBe(vector.signature);
  });

  it("is v1= followed by 64 lowercase hex digits", async () => {
    expect(await sign("k", { ...vector })).toMatch(/^v1=[0-9a-f]{64}$/);
  });

  it("uses whole unix seconds", () => {
    expect(unixSeconds(1764133200999)).toBe("1764133200");
    expect(unixSeconds(0)).toBe("0");
  });
});
