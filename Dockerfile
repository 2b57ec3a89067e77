# One image with the four service binaries; docker-compose.yml picks the
# binary per service. The build uses the committed .sqlx/ query data, so it
# needs no database.
FROM rust:1.95-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true
COPY . .
RUN cargo build --release --locked \
        -p orchestrator -p flights-svc -p cars-svc -p payments-svc \
    && cp target/release/orchestrator target/release/flights-svc \
          target/release/cars-svc target/release/payments-svc /usr/local/bin/

FROM debian:bookworm-slim
# curl is here for the health checks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/orchestrator /usr/local/bin/flights-svc \
                  /usr/local/bin/cars-svc /usr/local/bin/payments-svc /usr/local/bin/
# The saga definitions the orchestrator registers at start-up; mount another
# folder over it (or set SAGAS_DIR) for sagas of your own.
COPY sagas /etc/sagas
ENV SAGAS_DIR=/etc/sagas
USER nobody
CMD ["orchestrator"]
