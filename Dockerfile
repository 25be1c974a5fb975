# syntax=docker/dockerfile:1
# The Chorus container image: one static `chorus` binary in an otherwise empty image, run as a
# non-root user, with its data in /data.
#
#   podman build -t registry.example.com/chorus:0.1.0 .        (or docker build)
#
# compiles Chorus in the official Rust image (static glibc, so the final image needs no libc).
# Where base images cannot be pulled, build the final stage around a static binary compiled on
# the host (RUSTFLAGS='-C target-feature=+crt-static' cargo build --release
# --target x86_64-unknown-linux-gnu): put it in an otherwise empty folder as `chorus`, beside an
# empty folder `data` (it becomes /data: buildah does not create a WORKDIR in the image), and run
#
#   podman build --build-arg BINARY_FROM=context -f Dockerfile -t chorus FOLDER
#
# The stage named by BINARY_FROM provides /out/chorus and /out/data; the other one is skipped.
ARG BINARY_FROM=source
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm

# Compiles Chorus from the sources in the build context.
FROM ${RUST_IMAGE} AS source
WORKDIR /src
COPY . .
# The explicit --target keeps crt-static off build scripts and proc-macros.
RUN RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --locked -p chorus-broker --target x86_64-unknown-linux-gnu \
    && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/chorus /out/chorus \
    && install -d -m 0750 /out/data

# Takes a static binary already built: the build context is a folder holding `chorus` and an
# empty folder `data`.
FROM scratch AS context
COPY --chmod=0755 chorus /out/chorus
COPY data /out/data

FROM ${BINARY_FROM} AS binary

FROM scratch
COPY --from=binary /out/chorus /chorus
COPY --from=binary --chown=65532:65532 /out/data /data
ENV CHORUS_DATA_DIR=/data
USER 65532:65532
WORKDIR /data
# 6001: clients and the HTTP API; 6002: the cluster port; 9601: Prometheus metrics.
EXPOSE 6001 6002 9601
ENTRYPOINT ["/chorus"]
