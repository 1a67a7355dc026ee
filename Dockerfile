# syntax=docker/dockerfile:1.7
#
# agent-host container image: the host binary and the example plugins.
#
#   docker build -t agent-host:dev .
#   docker run --rm -p 8000:8000 -p 9090:9090 agent-host:dev
#
# Layout inside the image:
#   /usr/local/bin/agent-host           the host (also runs `agent-host check` in child processes)
#   /usr/lib/agent-host/plugins/*.so    the bundled plugins, read-only, part of the image
#   /var/lib/agent-host/plugins         the plugin directory the host watches (a VOLUME); in the
#                                       image it holds symlinks to the bundled plugins, so a plain
#                                       `docker run` serves them. Publish new versions here.
#   /var/lib/agent-host/work            the host's private copies of plugin files (must be disk)
#   /etc/agent-host/config.toml         the configuration (config/container.toml; Kubernetes
#                                       mounts a ConfigMap over /etc/agent-host)
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

# The Rust version must equal the channel in rust-toolchain.toml: plugins and host have to be
# built by the same compiler (tests/conformance/test_deploy.py checks that they agree).
ARG RUST_VERSION=1.95.0
# Build and runtime stages use the same Debian release, so the host and the plugins link against
# the glibc they run with (plugins are dlopen()ed: no static or musl build).
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
ARG RUST_VERSION
# Use the image's own toolchain rather than letting rustup read rust-toolchain.toml, which would
# download rustfmt and clippy (not needed to build). The FROM line above pins the same version.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} \
    CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
# `cargo build --release` builds the workspace's default members: the host and every crate in
# plugins/ (not the deliberately broken test fixtures). Each plugin lands at
# target/release/lib<crate>.so and is installed as <name>.so, the crate name without its `lib`
# prefix and `_plugin` suffix (libecho_plugin.so -> echo.so), because the host hands the table
# [plugins.<file stem>] of its configuration to the plugin loaded from that file.
# Every bundled plugin then goes through `agent-host check`: an image whose plugins the host
# would refuse fails here, not at deploy time.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    rustc --version; \
    cargo build --release --locked; \
    mkdir -p /out/plugins; \
    cp target/release/agent-host /out/agent-host; \
    for lib in target/release/lib*.so; do \
        name="$(basename "$lib" .so)"; \
        name="${name#lib}"; \
        name="${name%_plugin}"; \
        cp "$lib" "/out/plugins/${name}.so"; \
    done; \
    for plugin in /out/plugins/*.so; do \
        /out/agent-host check "$plugin"; \
    done

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG RUST_VERSION
LABEL org.opencontainers.image.title="agent-host" \
      org.opencontainers.image.description="Flyte agent (connector) server running agents as native plugins" \
      org.opencontainers.image.licenses="Apache-2.0" \
      agent-host.rust-toolchain="${RUST_VERSION}"
# ca-certificates: the system roots, for the sensor's object stores and for plugins that use them
#   (the webhook, rest-job and chat agents carry Mozilla's roots; deploy/OPERATIONS.md 9.1).
# tini: PID 1 that forwards SIGTERM/SIGHUP to the host and reaps processes a plugin may leave
#   behind (the host itself spawns `agent-host check` children and waits for them).
# The slim image already has what operators use through `kubectl`: sh, tar (kubectl cp), mv.
# The user has a fixed numeric id so Kubernetes' runAsNonRoot can verify it.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates tini; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 agent-host; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/agent-host --no-create-home \
        --shell /usr/sbin/nologin agent-host; \
    mkdir -p /etc/agent-host /var/lib/agent-host/plugins /var/lib/agent-host/work
COPY --from=build /out/agent-host /usr/local/bin/agent-host
COPY --from=build /out/plugins/ /usr/lib/agent-host/plugins/
COPY config/container.toml /etc/agent-host/config.toml
# The plugin directory starts with symlinks to the bundled plugins (the host follows symlinks).
# Publishing a new version renames a file over the link; the bundled file itself never changes.
# `chown -R` does not follow the links: the bundled files stay root-owned and read-only.
RUN set -eux; \
    for plugin in /usr/lib/agent-host/plugins/*.so; do \
        ln -s "$plugin" /var/lib/agent-host/plugins/; \
    done; \
    chown -R 10001:10001 /var/lib/agent-host; \
    chmod 0755 /var/lib/agent-host/plugins; \
    chmod 0700 /var/lib/agent-host/work
USER 10001:10001
WORKDIR /var/lib/agent-host
# gRPC (Flyte 1 and Flyte 2 agent services, health, reflection) and the metrics/status port.
EXPOSE 8000 9090
# Declared after the directory is filled: a new anonymous volume starts with the bundled links.
VOLUME ["/var/lib/agent-host/plugins"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/agent-host"]
CMD ["serve", "--config", "/etc/agent-host/config.toml"]
