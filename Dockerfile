# Container image of the `quickdraw` CLI, for distributed conversion (deploy/k8s, deploy/ray).
#
#   docker build -t quickdraw:latest .
#   docker run --rm quickdraw:latest --help
#
# Two stages: the builder compiles the workspace's `quickdraw` binary with the toolchain the
# workspace asks for (rust-version 1.95); the runtime stage is a slim Debian with the binary, CA
# certificates (object stores over HTTPS) and a non-root user. Both are Debian 12 (bookworm), so
# the binary's glibc matches the one it runs on.

FROM rust:1.95-slim-bookworm AS builder
# The slim image has gcc and libc6-dev; C dependencies (aws-lc-sys for TLS, zstd, bzip2, lzma,
# mimalloc) also want make, g++ and pkg-config.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace (see .dockerignore): every member's manifest and targets must be present
# for cargo to load the workspace, and --locked builds exactly Cargo.lock's versions.
COPY . .
RUN cargo build --release --locked -p quickdraw \
    && install -D -m 0755 target/release/quickdraw /out/quickdraw

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 quickdraw \
    && useradd --system --uid 10001 --gid quickdraw --home-dir /home/quickdraw --create-home \
        --shell /usr/sbin/nologin quickdraw
COPY --from=builder /out/quickdraw /usr/local/bin/quickdraw
# Local scratch: conversion stages shards here before uploading them to an object store.
ENV TMPDIR=/tmp
USER 10001:10001
WORKDIR /home/quickdraw
ENTRYPOINT ["quickdraw"]
CMD ["--help"]
