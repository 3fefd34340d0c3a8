# syntax=docker/dockerfile:1
# A small non-root image of the threatpipe binary (bundled librdkafka, rustls: no OpenSSL).
#   docker build -t threatpipe .
# Stage 1 builds with cached registry and target dirs; stage 2 is debian-slim with the
# binary, the pipeline content and an unprivileged user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY load load
COPY schemas schemas
COPY pipelines pipelines
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin threatpipe \
 && cp target/release/threatpipe /threatpipe \
 && strip /threatpipe

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 threatpipe \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/threatpipe --create-home threatpipe
COPY --from=build /threatpipe /usr/local/bin/threatpipe
COPY pipelines /etc/threatpipe/pipelines
COPY connectors /etc/threatpipe/connectors
# Config paths in pipelines/*.toml are relative to this directory.
WORKDIR /etc/threatpipe
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=6 CMD ["threatpipe", "probe", "http://127.0.0.1:8080/ready"]
ENTRYPOINT ["threatpipe"]
CMD ["run", "--config", "/etc/threatpipe/pipelines/kafka.toml"]
