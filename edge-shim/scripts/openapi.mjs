#!/usr/bin/env node
// The container's OpenAPI contract, as the edge uses it: `openapi.json` (a committed snapshot
// of the container's GET /api/openapi.json, pretty-printed) and
// `src/generated/openapi.d.ts` (openapi-typescript's types of it, committed; the edge
// handlers' bodies are typed with them, src/respond.ts `JsonBody` / `ProblemBody`).
//
//   node scripts/openapi.mjs gen                 # openapi.json → src/generated/openapi.d.ts
//   node scripts/openapi.mjs check-types         # fails if openapi.d.ts is not gen's output
//   node scripts/openapi.mjs fetch URL           # save the running container's document
//   node scripts/openapi.mjs check URL           # fails if the snapshot differs from it
//
// `npm run gen:types` is `gen`; .ci/parity.sh runs `check` against the container it starts
// and `check-types`. All of it works offline (openapi-typescript is a pinned devDependency).

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const SNAPSHOT = join(ROOT, "openapi.json");
const TYPES = join(ROOT, "src/generated/openapi.d.ts");

/** The snapshot's text for a document: 2-space JSON, keys in the container's order. */
const pretty = (doc) => `${JSON.stringify(doc, null, 2)}\n`;

function generate(out) {
  // --empty-objects-unknown: `Problem` is allOf [an object of extension members, …]; without
  // it that object becomes Record<string, never> and no problem body could be typed.
  execFileSync(
    process.execPath,
    [join(ROOT, "node_modules/openapi-typescript/bin/cli.js"), SNAPSHOT, "--output", out, "--empty-objects-unknown"],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
}

async function fetchDocument(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`GET ${url}: ${res.status}`);
  return res.json();
}

const [command, url] = process.argv.slice(2);
switch (command) {
  case "gen":
    generate(TYPES);
    console.log(`openapi: ${TYPES} regenerated from openapi.json`);
    break;
  case "check-types": {
    const dir = mkdtempSync(join(tmpdir(), "openapi-types-"));
    try {
      const fresh = join(dir, "openapi.d.ts");
      generate(fresh);
      if (readFileSync(fresh, "utf8") !== readFileSync(TYPES, "utf8")) {
        console.error("openapi: src/generated/openapi.d.ts is stale: run `npm run gen:types` and commit it");
        process.exit(1);
      }
      console.log("openapi: src/generated/openapi.d.ts matches openapi.json");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    break;
  }
  case "fetch":
    if (!url) throw new Error("fetch needs the container's /api/openapi.json URL");
    writeFileSync(SNAPSHOT, pretty(await fetchDocument(url)));
    console.log(`openapi: saved ${url} to openapi.json; now run npm run gen:types`);
    break;
  case "check": {
    if (!url) throw new Error("check needs the container's /api/openapi.json URL");
    const live = pretty(await fetchDocument(url));
    const saved = readFileSync(SNAPSHOT, "utf8");
    if (live !== saved) {
      const a = saved.split("\n");
      const b = live.split("\n");
      const i = a.findIndex((line, k) => line !== b[k]);
      console.error(
        `openapi: edge-shim/openapi.json is stale against the container (first difference at line ${i + 1}:\n` +
          `  snapshot:  ${a[i] ?? "<end>"}\n  container: ${b[i] ?? "<end>"})\n` +
          `  refresh: node scripts/openapi.mjs fetch ${url} && npm run gen:types, then fix the type errors`,
      );
      process.exit(1);
    }
    console.log("openapi: edge-shim/openapi.json matches the container's /api/openapi.json");
    break;
  }
  default:
    console.error("usage: openapi.mjs gen | check-types | fetch URL | check URL");
    process.exit(2);
}
