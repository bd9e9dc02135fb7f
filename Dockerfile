# authproxy: a static binary on a distroless base, running as non-root.
#
#   docker build -t authproxy .
#   docker run --rm -p 127.0.0.1:8200:8200 -v authproxy-state:/var/lib/authproxy \
#     -e AUTHPROXY__SERVER__LISTEN=0.0.0.0:8200 authproxy
#
# Paths: config /etc/authproxy/authproxy.toml (declarations beside it,
# /etc/authproxy/project.yaml); state (the embedded root key)
# /var/lib/authproxy (0700) — mount a volume there, or a Secret's key as the
# file /var/lib/authproxy/root-key.pem (Kubernetes: subPath; root-owned 0440
# or owned by 65532 with 0600/0400; never a symbolic link).
# The image also carries the reference upstream, environment_api.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY crates crates
COPY src src
COPY examples examples
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
      -p authproxy --bin authproxy --example environment_api \
 && mkdir -p /out/state \
 && cp target/x86_64-unknown-linux-musl/release/authproxy /out/ \
 && cp target/x86_64-unknown-linux-musl/release/examples/environment_api /out/

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/authproxy /usr/local/bin/authproxy
COPY --from=build /out/environment_api /usr/local/bin/environment_api
COPY --from=build --chown=65532:65532 --chmod=0700 /out/state /var/lib/authproxy
COPY deploy/config/authproxy.toml deploy/config/project.yaml /etc/authproxy/
# `authproxy health` and `authproxy jwks` find the config without arguments.
ENV AUTHPROXY_CONFIG=/etc/authproxy/authproxy.toml
USER 65532:65532
EXPOSE 8200
HEALTHCHECK --interval=10s --timeout=3s --start-period=2s CMD ["/usr/local/bin/authproxy", "health"]
ENTRYPOINT ["/usr/local/bin/authproxy"]
CMD ["serve", "--config", "/etc/authproxy/authproxy.toml", "--log-format", "json"]
