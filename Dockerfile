# walletd image: build with the Rust toolchain, run on a slim Debian with only the binary and
# the configuration. No libpq and no TLS library: diesel-async speaks the Postgres protocol
# itself and Redis is reached in plain TCP, so the runtime needs nothing but glibc.
#
#   docker build -t walletd .
#   docker run --rm -e DATABASE_URL=… -e REDIS_URLS=… -p 8080:8080 walletd
#   deploy/compose.yaml runs it with Postgres, 3 Redis and nginx (docs/cluster.md).
#
# The toolchain must be new enough for the edition-2024 crates and the lock file (Cargo.lock
# v4); 1.95 is the release this repository is built and tested with.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- build -------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src

# Dependency layer: the manifests and a stand-in crate, so that the dependencies are compiled
# in a layer that a change to walletd's own sources does not invalidate (only Cargo.toml or
# Cargo.lock do). --locked: exactly the versions of Cargo.lock, or fail. Then the stand-in is
# forgotten, fingerprints included, so cargo cannot mistake it for the real crate (COPY keeps
# the sources' own modification times, which may be older than the stand-in's).
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin walletd \
    && rm -rf src target/release/walletd target/release/deps/walletd-* \
        target/release/deps/libwalletd-* target/release/.fingerprint/walletd-*

# walletd itself: src (the code), migrations (embedded by embed_migrations!), config
# (default.toml is compiled in with include_str!).
COPY src ./src
COPY migrations ./migrations
COPY config ./config
RUN cargo build --release --locked --bin walletd \
    && strip target/release/walletd \
    && ./target/release/walletd --version

# --- runtime -----------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: for a DATABASE_URL / REDIS_URLS behind TLS-terminating proxies and for
# whatever an operator adds; nothing else is installed. A fixed non-root uid, no login shell,
# no home.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 walletd \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin walletd
WORKDIR /app
COPY --from=build /src/target/release/walletd /usr/local/bin/walletd
COPY config ./config
USER 10001:10001
ENV WALLETD_BIND=0.0.0.0:8080 \
    WALLETD_ENV=production \
    WALLETD_CONFIG_DIR=/app/config
EXPOSE 8080
STOPSIGNAL SIGTERM
# Liveness through GET /healthz. walletd has no CLI command that probes a running server, and
# the slim image has no curl or wget, so the probe is bash (always in Debian images) speaking
# HTTP/1.0 over its /dev/tcp: the port is taken from WALLETD_BIND, the first line of the answer
# must be a 200. No extra package, no shell beyond what the image has.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${WALLETD_BIND##*:} || exit 1; printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3; read -r -t 2 line <&3; [[ $line == HTTP/1.?' 200 '* ]]"]
ENTRYPOINT ["walletd"]
CMD ["serve"]
