# The postern image the Helm chart runs (helm/postern, image.repository): the release binary
# and the CA roots, nothing else.
#
#   docker build -t postern:0.1.0 .
#
# Build stage: the toolchain these sources are built and tested with (rustc 1.95; see
# ../shared/notes/stack.md for the pinned crates), Debian 12 like the runtime below so that
# the binary's glibc matches.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin postern \
 && strip target/release/postern

# Runtime: distroless "cc" carries glibc, libgcc, the CA roots (/etc/ssl/certs) and a
# non-root user 65532; no shell, no package manager. MTA-STS uses the compiled-in webpki
# roots unless [mta_sts] roots = "system" picks these.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/postern /usr/local/bin/postern
USER 65532:65532
# 587 submission, 465 submissions, 25 relay as the chart's container ports (high, so no
# capability is needed), 2526 hand-off, 9587 metrics and probes.
EXPOSE 2587 2465 2525 2526 9587
ENTRYPOINT ["/usr/local/bin/postern"]
CMD ["serve", "--config", "/etc/postern/postern.toml"]
