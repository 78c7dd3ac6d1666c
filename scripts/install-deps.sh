#!/usr/bin/env bash
# Installs envsteer's build and test dependencies from Debian packages (Debian 12).
# Idempotent: does nothing when everything is present. Needs root.
#
#   install-deps.sh           what scripts/build.sh and scripts/test.sh need (build, tests,
#                             the container image's tools)
#   install-deps.sh --build   only what compiles the agent (the Dockerfile's build stage)
set -euo pipefail

BUILD_ONLY=0
[ "${1:-}" = "--build" ] && BUILD_ONLY=1

# the agent: compiler, BPF toolchain, the libraries it links
PKGS=(
  build-essential cmake ninja-build pkg-config
  clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev linux-libc-dev
  libspdlog-dev libfmt-dev libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libsimdjson-dev
  libcpp-httplib-dev libcurl4-openssl-dev libssl-dev libnghttp2-dev
)
if [ "$BUILD_ONLY" = 0 ]; then
  PKGS+=(
    git
    libgtest-dev libgmock-dev libbenchmark-dev libclang-rt-14-dev
    python3 python3-pytest curl iproute2 procps wrk
    # e2e middle tiers in real runtimes (tests/e2e/test_never_wrong.py)
    golang-go python3-aiohttp python3-grpcio python3-h2
    # HTTP/2 tests and bench: h2load, nghttp (tests/e2e/test_h2.py)
    nghttp2-client
    # bench/run.sh (its smoke run is an e2e test, in a network namespace without the
    # network: installed here, not by bench/run.sh at test time): the proxy hop, the DNAT rows
    nginx-light iptables
    # the container image (scripts/image.sh, tests/e2e/test_image.py): a base made with
    # debootstrap from this machine's Debian mirror, built and run with podman and runc;
    # python3-yaml reads the rendered manifests (tests/e2e/kube2podman.py)
    podman runc debootstrap python3-yaml
  )
  # kubectl checks the install manifests offline; Debian's is kubernetes-client (another
  # kubectl may already be installed: don't clash with it)
  command -v kubectl >/dev/null 2>&1 || PKGS+=(kubernetes-client)
  # Node, npm and a JDK for the e2e tiers: Debian's, unless one is already installed (e.g.
  # NodeSource's nodejs, which bundles npm and conflicts with Debian's npm package)
  command -v node >/dev/null 2>&1 || PKGS+=(nodejs)
  command -v npm >/dev/null 2>&1 || PKGS+=(npm)
  command -v javac >/dev/null 2>&1 || PKGS+=(default-jdk-headless)
fi

# the npm packages of the e2e tiers (test only; a failure is reported, not fatal: the e2e
# test that needs them says what to run)
npm_deps() {
  [ "$BUILD_ONLY" = 1 ] && return 0
  "$(dirname "$0")/npm-deps.sh" || echo "install-deps: scripts/npm-deps.sh failed (needed by tests/e2e/test_never_wrong.py only)" >&2
}

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  npm_deps
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]} (run as root to install)" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages installed here are tools of the tests and the bench, never services of this
# machine: nginx (the bench's proxy hop, started by bench/run.sh in a pod namespace) must not
# start listening on the host's port 80. A policy-rc.d (the Debian way) keeps every package's
# service from starting during this install, unless the machine has its own policy.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# envsteer install-deps: no service starts while tools are installed\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  own_policy=1
  trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ "$own_policy" = 1 ]; then rm -f "$policy"; own_policy=0; fi
# nor at the next boot (only a service this run installed)
for p in "${missing[@]}"; do
  case "$p" in
    nginx-light) command -v systemctl >/dev/null 2>&1 && systemctl disable nginx >/dev/null 2>&1 || true ;;
  esac
done
echo "install-deps: done"
npm_deps
