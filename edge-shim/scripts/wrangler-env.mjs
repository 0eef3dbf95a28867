#!/usr/bin/env node
// Checks on the wrangler environments (wrangler.jsonc `env.staging`, `env.production`) for
// `make lint` and the deploy workflow.
//
//   node scripts/wrangler-env.mjs dry-run staging production
//       `wrangler deploy --dry-run --env NAME` for each: bundles the Worker with that
//       environment's bindings. Fails on a non-zero exit *and* on any wrangler warning: with
//       no `env` section at all wrangler only warns about an unknown NAME and exits 0.
//   node scripts/wrangler-env.mjs check-deployable NAME
//       Fails while NAME's Hyperdrive id is still the placeholder of wrangler.jsonc.
//   node scripts/wrangler-env.mjs secrets-json VAR...
//       Prints {"VAR": value} of the set, non-empty VARs (for `wrangler secret bulk`).

import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/** wrangler.jsonc as data: comments and trailing commas removed outside strings. */
export function readWranglerConfig(path = join(ROOT, "wrangler.jsonc")) {
  const text = readFileSync(path, "utf8");
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j;
    } else if (c === "/" && text[i + 1] === "/") {
      while (i < text.length && text[i] !== "\n") i++;
      out += "\n";
    } else if (c === "/" && text[i + 1] === "*") {
      i = text.indexOf("*/", i + 2) + 1;
    } else {
      out += c;
    }
  }
  return JSON.parse(out.replace(/,(\s*[}\]])/g, "$1"));
}

function dryRun(names) {
  if (names.length === 0) throw new Error("name at least one environment");
  const declared = Object.keys(readWranglerConfig().env ?? {});
  let failed = false;
  for (const name of names) {
    if (!declared.includes(name)) {
      console.error(`wrangler: no environment "${name}" in wrangler.jsonc (declared: ${declared.join(", ") || "none"})`);
      failed = true;
      continue;
    }
    const outdir = mkdtempSync(join(tmpdir(), `wrangler-${name}-`));
    const run = spawnSync("npx", ["wrangler", "deploy", "--dry-run", "--env", name, "--outdir", outdir], {
      cwd: ROOT,
      encoding: "utf8",
      env: { ...process.env, WRANGLER_SEND_METRICS: "false", NO_COLOR: "1", FORCE_COLOR: "0" },
    });
    rmSync(outdir, { recursive: true, force: true });
    const output = `${run.stdout}${run.stderr}`;
    const warnings = output.split("\n").filter((line) => /\[WARNING\]|\bWARNING\b/.test(line));
    if (run.status !== 0 || warnings.length > 0) {
      console.error(`wrangler deploy --dry-run --env ${name}: exit ${run.status}, ${warnings.length} warning(s)\n${output}`);
      failed = true;
    } else {
      console.log(`wrangler deploy --dry-run --env ${name}: ok`);
    }
  }
  return failed ? 1 : 0;
}

function checkDeployable(name) {
  const env = readWranglerConfig().env?.[name];
  if (env === undefined) {
    console.error(`no environment "${name}" in wrangler.jsonc`);
    return 1;
  }
  const placeholders = (env.hyperdrive ?? []).filter((h) => /^0{24,}/.test(h.id));
  for (const h of placeholders) {
    console.error(
      `env.${name}: Hyperdrive binding ${h.binding} still has the placeholder id ${h.id}; ` +
        "create it (npx wrangler hyperdrive create …) and put its id in wrangler.jsonc",
    );
  }
  return placeholders.length === 0 ? 0 : 1;
}

function secretsJson(names) {
  const secrets = {};
  for (const name of names) {
    const value = process.env[name];
    if (value !== undefined && value !== "") secrets[name] = value;
  }
  process.stdout.write(JSON.stringify(secrets));
  return 0;
}

const [command, ...args] = process.argv.slice(2);
const commands = {
  "dry-run": () => dryRun(args),
  "check-deployable": () => checkDeployable(args[0]),
  "secrets-json": () => secretsJson(args),
};
if (!(command in commands)) {
  console.error("usage: wrangler-env.mjs dry-run ENV... | check-deployable ENV | secrets-json VAR...");
  process.exit(2);
}
process.exit(commands[command]());
