# The RaftKit image: raftkit-node (the entrypoint), raftkit (the CLI) and
# raftkit-operator, run as uid 65532, listening on 8080, data in
# /var/lib/raftkit.
#
# Two ways to build it:
#
#   docker build -t raftkit:0.1.0 .
#       The default (BuildKit): compiles the three binaries in a Rust
#       builder image and ships them on distroless cc (glibc, no shell).
#
#   e2e/build-image.sh
#       Where no image can be pulled: binaries built on the host and a
#       Debian base made locally with debootstrap. It runs
#         docker build --target prebuilt --build-arg BASE_IMAGE=raftkit-base:bookworm \
#             -f Dockerfile <context holding bin/ and an empty data/>
#       The `prebuilt` stage comes before the builder so that even the
#       legacy builder (which builds every stage up to its target) pulls
#       and compiles nothing on that path.

# checkov:skip=CKV_DOCKER_2: no HEALTHCHECK: Kubernetes probes /livez and /readyz on the node's port (the operator sets them), and the image carries no HTTP client to run one
# checkov:skip=CKV_DOCKER_7: the base is a build argument (checkov cannot read it); its default carries a tag, and e2e/build-image.sh passes raftkit-base:bookworm
ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG RUST_IMAGE=rust:1-bookworm

# What every variant of the image shares.
FROM ${BASE_IMAGE} AS runtime-base
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="raftkit" \
      org.opencontainers.image.description="RaftKit: a Raft runtime (raftkit-node), its CLI (raftkit) and its Kubernetes operator (raftkit-operator)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV RAFTKIT_LISTEN=0.0.0.0:8080 \
    RAFTKIT_DATA_DIR=/var/lib/raftkit
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/raftkit-node"]

# The no-registry path: binaries built on the host, copied from the
# context (bin/raftkit-node, bin/raftkit, bin/raftkit-operator, data/).
FROM runtime-base AS prebuilt
COPY bin/ /usr/local/bin/
COPY --chown=65532:65532 data/ /var/lib/raftkit/

# The default path: build from source.
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p raftkit-node -p raftkit-cli -p raftkit-operator \
        --bin raftkit-node --bin raftkit --bin raftkit-operator \
 && mkdir -p /out/bin /out/data \
 && cp target/release/raftkit-node target/release/raftkit target/release/raftkit-operator /out/bin/ \
 && strip --strip-debug /out/bin/*

FROM runtime-base AS runtime
COPY --from=builder /out/bin/ /usr/local/bin/
COPY --from=builder --chown=65532:65532 /out/data/ /var/lib/raftkit/
