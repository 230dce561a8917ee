# syntax=docker/dockerfile:1
# hospitality-mesh: one image with the five daemons, hmctl, the REST gateway (hm-gateway) and
# the gateway's descriptor set; one target per daemon whose entrypoint is that daemon:
#   docker build -t hospitality-mesh .                       (runtime: all binaries, no entrypoint)
#   docker build --target guestd -t hospitality-mesh/guestd .
# The Kubernetes manifests (deploy/k8s) run the runtime image with `command: [/usr/bin/<daemon>]`.
# tests/deploy/test_install_tree.py checks this file's contract without a Docker engine: every
# shared library of every installed binary comes from a package the runtime stage installs (or
# the packages they depend on, or bookworm-slim's required set), and the daemons start from a
# `meson install --destdir` tree with no build folder present.

# ---- build: Debian bookworm with the build dependencies (the list tools/dev setup installs) ----
FROM debian:bookworm AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      meson ninja-build pkg-config gcc python3 \
      libgrpc-dev protobuf-c-compiler libprotobuf-c-dev protobuf-compiler libprotobuf-dev \
      grpc-proto libpq-dev libhiredis-dev libcurl4-openssl-dev libjwt-dev libjansson-dev \
      libmicrohttpd-dev libssl-dev uuid-dev libcairo2-dev \
      golang-go golang-grpc-gateway golang-github-grpc-ecosystem-grpc-gateway-dev \
      golang-github-gogo-googleapis-dev golang-google-grpc-dev golang-goprotobuf-dev \
      golang-google-genproto-dev \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# --prefix=/usr: binaries in /usr/bin, the descriptor set in /usr/share/hospitality-mesh (the
# path deploy/k8s/components/gateway copies it from).
RUN meson setup /build --prefix=/usr --buildtype=release -Db_ndebug=if-release \
 && meson compile -C /build \
 && meson install -C /build --destdir /install --strip

# ---- runtime: bookworm-slim with only the libraries the binaries link -------------------------
FROM debian:bookworm-slim AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libgrpc29 libprotobuf-c1 libpq5 libhiredis0.14 libcurl4 libjwt0 libjansson4 \
      libmicrohttpd12 libssl3 libuuid1 libcairo2 fonts-dejavu-core ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 hm \
 && useradd --system --uid 10001 --gid hm --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin hm
COPY --from=build /install/ /
USER 10001:10001
# gRPC 50051-50055, admin (metrics, /healthz, /readyz) 9101-9105, hm-gateway 8080
EXPOSE 50051 50052 50053 50054 50055 9101 9102 9103 9104 9105 8080

# ---- one entrypoint per daemon -----------------------------------------------------------------
FROM runtime AS guestd
ENTRYPOINT ["/usr/bin/guestd"]

FROM runtime AS bookingd
ENTRYPOINT ["/usr/bin/bookingd"]

FROM runtime AS recommenderd
ENTRYPOINT ["/usr/bin/recommenderd"]

FROM runtime AS gamificationd
ENTRYPOINT ["/usr/bin/gamificationd"]

FROM runtime AS privacyd
ENTRYPOINT ["/usr/bin/privacyd"]

FROM runtime AS hm-gateway
ENV HM_GATEWAY_ADDR=0.0.0.0:8080
ENTRYPOINT ["/usr/bin/hm-gateway"]

# The default target: every binary, no entrypoint (give the command: `docker run IMAGE guestd`).
FROM runtime
