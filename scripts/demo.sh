#!/usr/bin/env bash
# The demo: builds envsteer, starts a demo node on this machine (a network
# namespace with a bridge; every pod in a network namespace and cgroup of its
# own; --loopback: pods on loopback addresses instead), shows requests from
# pods of each environment landing on the right variant, and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/demo.sh: loading BPF programs needs root" >&2
  exit 1
fi
"$PWD/scripts/build.sh" envsteer
exec python3 scripts/demo.py --bin "${BUILD_DIR:-build}/envsteer" "$@"
