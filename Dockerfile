# Two stages: build with the Rust toolchain, run on a slim Debian with only the binary and
# the default configuration. No libpq: diesel-async talks the Postgres protocol itself.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
COPY examples ./examples
RUN cargo build --release --locked --bin walletd

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 walletd
WORKDIR /app
COPY --from=build /src/target/release/walletd /usr/local/bin/walletd
COPY config ./config
USER walletd
ENV WALLETD_BIND=0.0.0.0:8080 WALLETD_ENV=production
EXPOSE 8080
ENTRYPOINT ["walletd"]
CMD ["serve"]
