# syntax=docker/dockerfile:1
# switchyard container image.
#   docker build -t switchyard .
#   docker run --rm -p 8080:8080 -v "$PWD/my-config-dir:/etc/switchyard:ro" switchyard
# Mount a directory (or a Kubernetes ConfigMap) at /etc/switchyard to get hot reload on change.

# ---- build --------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and the target dir between builds; the binary is copied
# out of the cached target dir because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin switchyard \
    && install -m 0755 target/release/switchyard /usr/local/bin/switchyard

# ---- run ----------------------------------------------------------------------------------
# debian-slim rather than distroless: the HEALTHCHECK needs curl (distroless has no shell).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify the USER below.
RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin switchyard \
    && install -d -o switchyard -g switchyard -m 0750 /var/lib/switchyard \
    && install -d -m 0755 /etc/switchyard
COPY --from=builder /usr/local/bin/switchyard /usr/local/bin/switchyard
COPY config/example.yaml /etc/switchyard/switchyard.yaml

USER 10001:10001
# Logs go to stderr; RUST_LOG sets the level (e.g. RUST_LOG=debug).
ENV RUST_LOG=info
# 8080: the proxy listener of config/example.yaml. 9901: the admin API. Note that the example
# binds admin to 127.0.0.1, so 9901 is only reachable from outside the container if your config
# sets admin.bind: 0.0.0.0:9901 (then also set admin.token_file, which mutating calls need).
EXPOSE 8080 9901
# /livez on the admin API; change the port here if your config moves admin.bind.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9901/livez || exit 1
# SIGTERM drains for up to drain_timeout (default 30s): give `docker stop` (default 10s) and
# Kubernetes' terminationGracePeriodSeconds (default 30s) more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["switchyard"]
CMD ["run", "-c", "/etc/switchyard/switchyard.yaml"]
