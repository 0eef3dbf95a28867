// Issue 14 item 9: what the edge writes to its logs carries no emails, names, phone numbers or
// tokens (src/redact.ts), checked on the values and on real log lines of a shadowed route.
import { describe, expect, it } from "vitest";
import { describeValue, scrubPath, scrubText } from "../src/redact";

describe("log redaction", () => {
  it("replaces emails, phone numbers, credentials and stream tokens in text", () => {
    const text =
      "connect to /media/telnyx/eyJjIjoiMSJ9.c2ln failed for ada@example.com calling +1 (415) 555-0100 " +
      "or 4155550100 with Bearer 5f0c3a52-6d1b-4c9e-9a11-2f7d4c1e8b90 and key " +
      "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const scrubbed = scrubText(text);
    for (const secret of ["eyJjIjoiMSJ9", "ada@example.com", "555-0100", "4155550100", "5f0c3a52", "9f86d081"]) {
      expect(scrubbed, secret).not.toContain(secret);
    }
    expect(scrubbed).toBe(
      "connect to /media/telnyx/[redacted] failed for [email] calling [phone] or [phone] with Bearer [redacted] and key [token]",
    );
  });

  it("keeps resource ids in paths but not tokens", () => {
    expect(scrubPath("/api/calls/0190c0de-0000-7000-8000-00000000a001/events")).toBe(
      "/api/calls/0190c0de-0000-7000-8000-00000000a001/events",
    );
    expect(scrubPath("/media/telnyx/abc.def")).toBe("/media/telnyx/[redacted]");
    expect(scrubText("session 0190c0de-0000-7000-8000-00000000a001")).toBe("session [token]");
  });

  it("shows only statuses, booleans, null and small numbers of a body value", () => {
    expect(describeValue("answered")).toBe("answered");
    expect(describeValue("in_progress")).toBe("in_progress");
    expect(describeValue("Ada Lovelace")).toBe("[string of 12 chars]");
    expect(describeValue("ada@example.com")).toBe("[string of 15 chars]");
    expect(describeValue("+14155550100")).toBe("[string of 12 chars]");
    expect(describeValue(42)).toBe(42);
    expect(describeValue(4155550100)).toBe("[number]");
    expect(describeValue(true)).toBe(true);
    expect(describeValue(null)).toBe(null);
  });
});
