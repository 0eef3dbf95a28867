// Tests run inside workerd (@cloudflare/vitest-pool-workers). The Worker's outbound fetches go
// to test/fake-origin.js instead of the network, so `npm test` needs neither the Rust
// container nor a connection.
import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { defineConfig } from "vitest/config";
import vector from "./test/vectors/edge-signature.json" with { type: "json" };

export default defineConfig({
  plugins: [
    cloudflareTest({
      main: "./src/index.ts",
      wrangler: { configPath: "./wrangler.jsonc" },
      miniflare: {
        bindings: {
          ORIGIN_URL: "http://origin.test:8080",
          EDGE_SHARED_SECRET: vector.secret,
          TELNYX_PUBLIC_KEY: "test-telnyx-public-key",
          ASSEMBLYAI_WEBHOOK_SECRET: "test-assemblyai-secret",
        },
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
