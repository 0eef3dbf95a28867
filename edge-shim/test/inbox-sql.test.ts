// The edge runs the container's inbox statement, not a copy: src/inbox.ts imports
// src/webhook_inbox_insert.sql as a Text module (the file the container's src/inbox.rs
// includes; a Rust unit test there checks the import names that file). This proves the Worker receives the
// file's bytes unchanged, as Node reads them from disk in test/global-setup.ts.
import { describe, expect, inject, it } from "vitest";
import { INBOX_INSERT_SQL } from "../src/inbox";

describe("the inbox statement at the edge", () => {
  it("is the text of sql/webhook_inbox_insert.sql, byte for byte", () => {
    const file = inject("inboxSqlFile");
    expect(file.startsWith("with parsed as (")).toBe(true);
    expect(INBOX_INSERT_SQL).toBe(file);
  });
});
