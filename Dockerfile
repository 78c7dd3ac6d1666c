# envsteer agent image (used by daemonset/): built on Debian 12, run on Debian 12 slim.
#
#   docker build -t REGISTRY/envsteer:0.1.0 .
#
# The BPF object is compiled into the binary (libbpf skeleton): the image holds the binary and
# the shared libraries it links, nothing else. /bin/sh, grep and mount (Debian "required"
# packages, present in the slim image) are used by the DaemonSet's bpffs init container.
ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---- build -------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS build
WORKDIR /src
# Dependencies first, so that this layer is reused while only the sources change. --build:
# only what compiles the agent (no test tools).
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh --build && rm -rf /var/lib/apt/lists/*
COPY . .
# Same build type as the tested build (RelWithDebInfo), stripped on install; no tests.
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DENVSTEER_BUILD_TESTS=OFF \
 && ninja -C /build envsteer \
 && cmake --install /build --prefix /out --strip \
 && /out/bin/envsteer --version

# ---- runtime -----------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE}
# The packages of the libraries the binary links (readelf -d: libbpf, libspdlog, libfmt,
# libyaml-cpp, libsimdjson, libcpp-httplib, libcurl, libnghttp2, libstdc++, libgcc_s, libc) and the ones those pull in
# (libelf, zlib, libssl, libbrotli), all from Debian 12.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libbpf1 libelf1 zlib1g \
      libspdlog1.10 libfmt9 libyaml-cpp0.7 libsimdjson14 \
      libcpp-httplib0.11 libssl3 libbrotli1 \
      libcurl4 libnghttp2-14 ca-certificates \
      libstdc++6 libgcc-s1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/bin/envsteer /usr/local/bin/envsteer
# Fail the build if a library is missing, rather than the pod at start-up.
RUN if ldd /usr/local/bin/envsteer | grep 'not found'; then exit 1; fi \
 && envsteer --version
ENTRYPOINT ["/usr/local/bin/envsteer"]
CMD ["--help"]
