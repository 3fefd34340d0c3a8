# Builds the threatpipe binary (bundled librdkafka) into a slim runtime image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/threatpipe /threatpipe

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /threatpipe /usr/local/bin/threatpipe
COPY pipelines /etc/threatpipe/pipelines
EXPOSE 8080
ENTRYPOINT ["threatpipe"]
CMD ["run", "--config", "/etc/threatpipe/pipelines/kafka.toml"]
