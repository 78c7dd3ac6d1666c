#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds, runs every ctest test
# (unit tests and end-to-end tests against the real kernel). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: the end-to-end tests load BPF programs and make cgroups: run as root" >&2
  exit 1
fi
"$PWD/scripts/build.sh"
BUILD_DIR=${BUILD_DIR:-build}
cd "$BUILD_DIR"
# Every end-to-end file runs in a network namespace of its own (tests/CMakeLists.txt), so the
# files run side by side; the few that touch something machine-wide run alone (RUN_SERIAL).
# ENVSTEER_TEST_JOBS sets how many at once (default 3: the files wait on I/O and sleeps more
# than they compute); a -j given to this script wins.
ctest --output-on-failure --timeout 600 -j "${ENVSTEER_TEST_JOBS:-3}" "$@"
