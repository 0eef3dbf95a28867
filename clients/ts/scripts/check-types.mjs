#!/usr/bin/env node
// Fails when src/generated/openapi.d.ts is not what `npm run gen:types` makes of the committed
// document (edge-shim/openapi.json): the types the frontend compiles against must be the
// document's.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const TYPES = join(ROOT, "src/generated/openapi.d.ts");
const dir = mkdtempSync(join(tmpdir(), "callbridge-client-types-"));
try {
  const fresh = join(dir, "openapi.d.ts");
  execFileSync(
    process.execPath,
    [
      join(ROOT, "node_modules/openapi-typescript/bin/cli.js"),
      join(ROOT, "../../edge-shim/openapi.json"),
      "--output",
      fresh,
      "--empty-objects-unknown",
    ],
    // Its own lint warnings are `make lint`'s business (redocly.yaml): only failures print.
    { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"] },
  );
  if (readFileSync(fresh, "utf8") !== readFileSync(TYPES, "utf8")) {
    console.error("clients/ts: src/generated/openapi.d.ts is stale: run `make openapi` and commit it");
    process.exit(1);
  }
  console.log("clients/ts: src/generated/openapi.d.ts matches edge-shim/openapi.json");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
