#!/usr/bin/env bash
# The relay under attack (tests/e2e/test_relay_stress.py): a slow-reading upstream fed streamed
# POSTs by an attacker pod while a victim pod's re-routed requests are timed; bounds, memory and
# SIGTERM checked; in the CI suite too, this runs it RUNS times in a row. Root; builds the agent if ENVSTEER_BIN is not set; runs in a network namespace of
# its own. Usage: scripts/relay-stress.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/relay-stress.sh: loads BPF programs and makes cgroups: run as root" >&2
  exit 1
fi
runs=${1:-3}
if [ -z "${ENVSTEER_BIN:-}" ]; then
  scripts/build.sh
  ENVSTEER_BIN=$PWD/${BUILD_DIR:-build}/envsteer
fi
export ENVSTEER_BIN
cd tests/e2e
failed=0
for i in $(seq 1 "$runs"); do
  echo "== run $i/$runs"
  unshare -n -- bash -c 'ip link set lo up && exec /usr/bin/python3 -m pytest -q -p no:cacheprovider test_relay_stress.py' \
    || failed=$((failed + 1))
done
echo "relay stress: $((runs - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
