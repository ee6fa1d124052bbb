# syntax=docker/dockerfile:1
#
# The Gatewright controller image: the `gatewright` binary as entrypoint,
# run as a non-root user. Build from the repository root:
#
#   docker build -t gatewright/gatewright:0.1.0 .
#
# Image names are short names; the builder resolves them against its
# configured registry (or a mirror).

# ---- build ----------------------------------------------------------------
# Same Rust release as CI; Debian bookworm, like the runtime stage below, so
# the binary's glibc matches.
FROM rust:1.95-bookworm AS build
WORKDIR /src

# The whole workspace: Cargo resolves every member's manifest even when it
# builds one package (.dockerignore keeps target/, .tools/ and .git/ out).
COPY . .

# RE2's headers and static library: the translator checks route regexes
# with RE2, Envoy's engine, and links it statically, so the runtime stage
# needs nothing more. Not pinned, like the runtime stage's packages.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libre2-dev \
 && rm -rf /var/lib/apt/lists/*

# `cargo fetch` downloads every package in Cargo.lock, for all platforms.
# That is what lets render/'s build script (which runs `cargo metadata
# --offline` on the workspace to find envoy-types' .proto files) succeed
# without going online, and lets the build run with --offline.
# The cache mounts keep downloads and compiled dependencies between builds;
# the binary is copied out because the target directory is a cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo fetch --locked \
 && cargo build --release --locked --offline -p gatewright --bin gatewright \
 && install -D -m 0755 target/release/gatewright /out/gatewright

# ---- runtime --------------------------------------------------------------
FROM debian:bookworm-slim

# CA certificates for TLS to anything that is not the API server (whose CA
# comes with the service account); nothing else is needed: the binary uses
# rustls, not OpenSSL, and the controller runs no Envoy itself. Not
# pinned to a Debian package version: bookworm's security updates replace
# old versions in the archive, and a pin would then break the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /out/gatewright /usr/local/bin/gatewright

# A numeric user, so Kubernetes can verify runAsNonRoot; the chart sets the
# same user.
USER 65532:65532

# 18000: xDS (ADS gRPC, mutual TLS); 18001: admin HTTP (/healthz, /readyz, /metrics).
EXPOSE 18000 18001

ENTRYPOINT ["/usr/local/bin/gatewright"]
CMD ["--help"]
