// Tests run inside workerd (@cloudflare/vitest-pool-workers). The Worker's outbound fetches go
// to test/fake-origin.js instead of the network, so `npm test` needs no Rust container. Its
// Hyperdrive binding points at a fresh PostgreSQL database with the container's migrations
// (test/global-setup.ts; TEST_DATABASE_URL, default the local cluster).
import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { defineConfig } from "vitest/config";
import vector from "./test/vectors/edge-signature.json" with { type: "json" };
import telnyx from "./test/vectors/telnyx-webhook.json" with { type: "json" };
import { hyperdriveUrl } from "./test/database";

export default defineConfig({
  resolve: {
    // pg (CommonJS) requires pg-protocol, whose package.json points `import` at an ES module
    // shipped as .js in a CommonJS package; the workers pool's module loader follows `import`
    // and fails. wrangler's own bundling (esbuild) is unaffected; tests get the CJS build.
    // pg-cloudflare (pg's socket in workerd) exports its socket only under the `workerd`
    // condition, which this resolver does not apply: the default is an empty module.
    alias: [
      { find: /^pg-protocol$/, replacement: "pg-protocol/dist/index.js" },
      { find: /^pg-cloudflare$/, replacement: `${import.meta.dirname}/node_modules/pg-cloudflare/dist/index.js` },
    ],
  },
  test: { globalSetup: ["./test/global-setup.ts"] },
  plugins: [
    cloudflareTest({
      main: "./src/index.ts",
      wrangler: { configPath: "./wrangler.jsonc" },
      miniflare: {
        bindings: {
          ORIGIN_URL: "http://origin.test:8080",
          EDGE_SHARED_SECRET: vector.secret,
          TELNYX_PUBLIC_KEY: telnyx.publicKey,
          ASSEMBLYAI_WEBHOOK_SECRET: "test-assemblyai-secret",
        },
        hyperdrives: { HYPERDRIVE: hyperdriveUrl() },
        outboundService: "fake-origin",
        workers: [
          {
            name: "fake-origin",
            modules: true,
            scriptPath: "./test/fake-origin.js",
            compatibilityDate: "2026-04-20",
          },
        ],
      },
    }),
  ],
});
