#!/usr/bin/env bash
# envsteer benchmark: builds what it needs, then runs bench/bench.py (one node, A/B rounds
# interleaved, one table at the end; bench/results/latest.md for full runs).
#
#   bench/run.sh [--smoke] [--rounds N] [--connects N] [--duration S]
#                [--only connect,header,http,scale,control] [--loopback]
#   bench/run.sh --only h2 [--rounds N]        gRPC through the HTTP/2 endpoint vs direct vs
#                                             nginx grpc_pass (h2load; bench/results/h2.md)
#                [--prog-stats] [--out FILE.md] [--json FILE.json]
#   bench/run.sh --profile [--duration S]     perf profile of the header programs' cost
#                                             (bench/profile.py; installs linux-perf)
#
# ENVSTEER_BIN: the agent binary to use (default: build it with scripts/build.sh envsteer).
# BENCH_TIMEOUT: overall limit in seconds (default 1800; 300 with --smoke).
# Pods run in network namespaces of their own on a node's bridge (tests/e2e/topology.py);
# --loopback: pods on loopback addresses of one namespace (the older shape).
# Root only. Traffic stays inside the namespaces the run makes.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [ "$(id -u)" -ne 0 ]; then
  echo "bench/run.sh: run as root (cgroups, BPF programs)" >&2
  exit 1
fi

smoke=0 profile=0
for a in "$@"; do
  [ "$a" = "--smoke" ] && smoke=1
  [ "$a" = "--profile" ] && profile=1
done

# Debian packages: wrk (HTTP load), nginx (the proxy hop), iptables (the DNAT rows; on
# Debian 12 `iptables` is iptables-nft). Their services are not started by the benchmark
# except as its own child processes.
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench/run.sh: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi
for t in cc bpftool wrk nginx iptables-restore unshare; do
  command -v "$t" >/dev/null 2>&1 || { echo "bench/run.sh: $t not found" >&2; exit 1; }
done

# The agent.
if [ -z "${ENVSTEER_BIN:-}" ]; then
  "$REPO/scripts/build.sh" envsteer >&2
  ENVSTEER_BIN="$REPO/${BUILD_DIR:-build}/envsteer"
fi
[ -x "$ENVSTEER_BIN" ] || { echo "bench/run.sh: $ENVSTEER_BIN is not executable" >&2; exit 1; }
export ENVSTEER_BIN

# The C tools, compiled into a temp dir removed on exit.
TOOLS=$(mktemp -d /tmp/envsteer-bench-tools.XXXXXX)
trap 'rm -rf "$TOOLS"' EXIT
cc -O2 -Wall -Wextra -o "$TOOLS/connloop" "$REPO/bench/src/connloop.c"
cc -O2 -Wall -Wextra -o "$TOOLS/httpd" "$REPO/bench/src/httpd.c"
cc -O2 -Wall -Wextra -o "$TOOLS/proginfo" "$REPO/bench/src/proginfo.c"

if [ $profile = 1 ] && ! command -v perf >/dev/null 2>&1; then
  echo "bench/run.sh: installing linux-perf" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf >/dev/null
fi

PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
limit=${BENCH_TIMEOUT:-$([ $smoke = 1 ] && echo 300 || echo 1800)}
script=bench.py
if [ $profile = 1 ]; then
  script=profile.py
  args=()
  for a in "$@"; do [ "$a" = "--profile" ] || args+=("$a"); done
  set -- "${args[@]}"
fi
# bench.py cleans up on SIGTERM (node.close(): processes by PID, cgroups, pins, netns).
# It runs in a network namespace of its own (unshare -n; lo brought up by --lo-up), so its
# addresses never meet another run's; the node and every pod get namespaces of their own
# (ip netns add), the iptables rules live in the iptables client's, so no netfilter rule is
# ever loaded into the host's tables.
timeout --signal=TERM --kill-after=30 "$limit" \
  unshare -n "$PY" "$REPO/bench/$script" --lo-up --tools "$TOOLS" --bin "$ENVSTEER_BIN" "$@"
