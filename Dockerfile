# syntax=docker/dockerfile:1
# switchyard's container image: a distroless runtime (no shell, no package manager), non-root.
#   docker build --build-arg SWITCHYARD_COMMIT="$(git rev-parse HEAD)" -t switchyard .
#   docker run --rm -p 8080:8080 -v "$PWD/my-config-dir:/etc/switchyard:ro" switchyard
# Mount a directory (or a Kubernetes ConfigMap, never through subPath) at /etc/switchyard: only
# then does a change reach the running process, which reloads it. deploy/ has the Kubernetes
# manifests.

# ---- build --------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# switchyard_build_info{commit}: .dockerignore keeps .git out of the build, so the commit
# comes in as a build argument.
ARG SWITCHYARD_COMMIT=unknown
ENV SWITCHYARD_COMMIT=${SWITCHYARD_COMMIT}
COPY . .
# Cache mounts keep the crate registry and the target dir between builds; the binary is copied
# out of the cached target dir because a cache mount is not part of the image. Its debug line
# tables go (35 MB -> 8 MB); its symbols stay, so backtraces and perf still name functions.
# The empty state directory is made here: the runtime image has no shell to make it with.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin switchyard \
    && install -m 0755 target/release/switchyard /usr/local/bin/switchyard \
    && strip --strip-debug /usr/local/bin/switchyard \
    && install -d -m 0750 /state

# ---- run ----------------------------------------------------------------------------------
# glibc, libgcc, CA certificates (for https backends without a ca_file) and nothing else. The
# binary is built against the same Debian release (bookworm = debian12).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/local/bin/switchyard /usr/local/bin/switchyard
COPY --from=builder --chown=10001:10001 /state /var/lib/switchyard
COPY config/example.yaml /etc/switchyard/switchyard.yaml
# A fixed numeric uid/gid (not distroless' 65532), the same as before, so that existing
# volumes, PodSecurity settings and runAsUser keep working; deploy/ uses it too.
USER 10001:10001
# Logs go to stderr; RUST_LOG sets the level (e.g. RUST_LOG=debug).
ENV RUST_LOG=info
# 8080: the proxy listener of config/example.yaml. 9902: the ops listener (/livez, /readyz,
# /metrics) when the config has `ops: { bind: 0.0.0.0:9902 }`, as deploy/ does. The admin API
# (9901) binds loopback and is not published: with `admin.token_file`, its mutating calls need
# the token; set `admin.bind` to reach it from outside the container.
EXPOSE 8080 9902
# Docker only (Kubernetes probes the ops port instead): the binary asks the admin API, inside
# the container, for /status; there is no shell or curl to do it otherwise.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/switchyard", "status", "--admin", "127.0.0.1:9901"]
# SIGTERM drains for up to drain_timeout (default 30s): give `docker stop` (default 10s) and
# Kubernetes' terminationGracePeriodSeconds (default 30s) more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["run", "-c", "/etc/switchyard/switchyard.yaml"]
