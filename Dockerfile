# The three binaries in one image: greenfill-scheduler, greenfill-agent, greenfill.
# docker build -t greenfill .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang libclang-dev protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p greenfill-scheduler -p greenfill-agent -p greenfill

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/greenfill-scheduler /src/target/release/greenfill-agent /src/target/release/greenfill /usr/local/bin/
# The scheduler runs as this uid (see deploy/kubernetes/scheduler.yaml); the agent as root.
USER 65532:65532
ENTRYPOINT []
CMD ["greenfill", "--help"]
