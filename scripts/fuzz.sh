#!/usr/bin/env bash
# Fuzzes the HTTP request parser (bpf/lib/http.h) for longer than CI's 20 s:
#   scripts/fuzz.sh [seconds]        (default 600; FUZZ_JOBS=N runs N processes)
# Builds tests/fuzz/fuzz_http.c with clang (libFuzzer, ASan, UBSan) into $BUILD_DIR/fuzz-http/,
# grows a corpus there from tests/fuzz/corpus (which it only reads), and leaves any crash input
# in $BUILD_DIR/fuzz-http/artifacts/. Reproduce one with: $BUILD_DIR/fuzz-http/fuzz_http FILE
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
jobs=${FUZZ_JOBS:-1}
out=${BUILD_DIR:-build}/fuzz-http
clang=$(command -v clang || command -v clang-19 || command -v clang-16 || command -v clang-14) || {
  echo "scripts/fuzz.sh: clang not found (run scripts/install-deps.sh)" >&2
  exit 1
}
mkdir -p "$out/corpus" "$out/artifacts"
"$clang" -g -O1 -std=c11 -Wall -Wextra -Werror \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I. tests/fuzz/fuzz_http.c -o "$out/fuzz_http"
args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
  -artifact_prefix="$out/artifacts/")
[ "$jobs" -gt 1 ] && args+=(-fork="$jobs")
echo "scripts/fuzz.sh: fuzzing for ${secs}s, corpus $out/corpus"
"$out/fuzz_http" "${args[@]}" "$out/corpus" tests/fuzz/corpus
