// ALLOWED_ORIGINS at the edge matches as the container's AllowedOrigins does
// (src/config/origins.rs): the same cases as its unit tests.
import { describe, expect, it } from "vitest";
import { originAllowed } from "../src/respond";

describe("originAllowed", () => {
  const exact = ["https://app.example.com", "http://localhost:3000"];
  const preview = ["https://*.callbridge-web.pages.dev"];

  it("matches exact origins exactly", () => {
    expect(originAllowed("https://app.example.com", exact)).toBe(true);
    expect(originAllowed("http://localhost:3000", exact)).toBe(true);
    for (const other of ["https://app.example.com:444", "http://app.example.com", "https://evil.app.example.com", "null"]) {
      expect(originAllowed(other, exact), other).toBe(false);
    }
  });

  it("matches one DNS label over https for a preview pattern", () => {
    expect(originAllowed("https://3f2a91c.callbridge-web.pages.dev", preview)).toBe(true);
    expect(originAllowed("https://feature-x.callbridge-web.pages.dev", preview)).toBe(true);
    for (const other of [
      "https://callbridge-web.pages.dev",
      "https://a.b.callbridge-web.pages.dev",
      "http://x.callbridge-web.pages.dev",
      "https://x.callbridge-web.pages.dev:8443",
      "https://xcallbridge-web.pages.dev",
      "https://x.evil-callbridge-web.pages.dev",
      "https://x.callbridge-web.pages.dev.evil.com",
      "https://X.callbridge-web.pages.dev",
      "https://-x.callbridge-web.pages.dev",
    ]) {
      expect(originAllowed(other, preview), other).toBe(false);
    }
  });
});
