# syntax=docker/dockerfile:1.7
# Production image: cargo-chef caches the dependency build; the runtime is distroless,
# non-root, and carries only the binary (no simulators: the `sim` feature is off).

# The exact toolchain of rust-toolchain.toml. RUSTUP_TOOLCHAIN overrides that file, so rustup
# uses the image's own toolchain and does not fetch the file's rustfmt/clippy components
# (the image's minimal profile lacks them; building needs neither).
FROM rust:1.95.0-slim-bookworm AS chef
ENV RUSTUP_TOOLCHAIN=1.95.0
RUN cargo install cargo-chef --locked --version 0.1.73
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin callbridge \
 && cp target/release/callbridge /usr/local/bin/callbridge

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /usr/local/bin/callbridge /usr/local/bin/callbridge
COPY --from=builder /app/migrations /app/migrations
WORKDIR /app
# 65532 is distroless's `nonroot` user.
USER 65532:65532
ENV APP_ENV=production PORT=8080 LOG_FORMAT=json
EXPOSE 8080
# The binary checks itself: distroless has no shell or curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/callbridge", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/callbridge"]
CMD ["serve"]
