# firelane: multi-stage build, static-ish binary on a distroless non-root runtime.
# Build: docker build -t firelane .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --bin firelane \
 && strip target/release/firelane \
 && mkdir -p /out/var/lib/firelane

# distroless/cc has glibc, CA certificates and a nonroot user, and nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/firelane /usr/local/bin/firelane
COPY config/firelens.toml /etc/firelane/firelane.toml
# distroless has no shell to mkdir/chown: bring the data directory over owned by nonroot.
COPY --from=build --chown=65532:65532 /out/var/lib/firelane /var/lib/firelane
# Forward (TCP) and the admin port (/health /ready /metrics /api/v1/...), as in
# /etc/firelane/firelane.toml (config/firelens.toml). The FireLens unix socket needs no port.
# A Fluent Bit config the ECS agent writes for firelensConfiguration type "fluentbit" is
# bind-mounted at /fluent-bit/etc/fluent-bit.conf; `run` without -c reads it when present,
# else /etc/firelane/firelane.toml.
EXPOSE 24224 2020
# Disk buffers. Mount a volume here (ECS: a bind mount or EFS) for durability across tasks.
VOLUME ["/var/lib/firelane"]
# The FireLens socket directory /var/run is bind-mounted by the ECS agent and chowned to
# the container's user; run as root there (`"user": "0"`) only if your agent is older.
USER nonroot:nonroot
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/firelane", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/firelane"]
CMD ["run"]
