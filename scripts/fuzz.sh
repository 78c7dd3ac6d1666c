#!/usr/bin/env bash
# Runs a libFuzzer target for longer than CI's 20 s:
#   scripts/fuzz.sh [--target http|msg|decode] [seconds]   (default http, 600 s; FUZZ_JOBS=N runs N processes)
#     http  the HTTP request parser (tests/fuzz/fuzz_http.c, seeds tests/fuzz/corpus)
#     msg   the sk_msg program's logic, region by region (tests/fuzz/fuzz_msg.c, seeds
#           tests/fuzz/corpus-msg, written by tests/fuzz/gen_msg_seeds.py)
#     decode the fast Pod/Service decoder against the nlohmann path (tests/fuzz/fuzz_decode.cc, seeds
#           tests/fuzz/corpus-decode, dictionary tests/fuzz/decode.dict)
# Builds the target with clang (libFuzzer, ASan, UBSan) into $BUILD_DIR/fuzz-<target>/, grows a
# corpus there from the seeds (which it only reads), and leaves any crash input in
# $BUILD_DIR/fuzz-<target>/artifacts/. Reproduce one with: $BUILD_DIR/fuzz-<target>/fuzz_<target> FILE
# (fuzz_msg: FUZZ_MSG_TRACE=1 prints every program run and verdict).
set -euo pipefail
cd "$(dirname "$0")/.."
target=http
if [ "${1:-}" = "--target" ]; then
  target=${2:?--target needs http, msg or decode}
  shift 2
fi
secs=${1:-600}
jobs=${FUZZ_JOBS:-1}
case "$target" in
  http) inc=(-I.); seeds=tests/fuzz/corpus; extra=() ;;
  msg) inc=(-Itests/fuzz/shim -I.); seeds=tests/fuzz/corpus-msg; extra=(-max_len=1024) ;;
  decode) inc=(-Iagent -I.); seeds=tests/fuzz/corpus-decode; extra=(-dict=tests/fuzz/decode.dict) ;;
  *) echo "scripts/fuzz.sh: unknown target $target (http, msg or decode)" >&2; exit 2 ;;
esac
out=${BUILD_DIR:-build}/fuzz-$target
clang=$(command -v clang || command -v clang-19 || command -v clang-16 || command -v clang-14) || {
  echo "scripts/fuzz.sh: clang not found (run scripts/install-deps.sh)" >&2
  exit 1
}
mkdir -p "$out/corpus" "$out/artifacts"
if [ "$target" = decode ]; then  # C++: the decoders themselves, against simdjson and yaml-cpp
  "${clang/clang/clang++}" -g -O1 -std=c++20 -Wall -Wextra -Werror -Wno-missing-field-initializers \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    "${inc[@]}" tests/fuzz/fuzz_decode.cc agent/k8s/fastdecode.cpp agent/k8s/decode.cpp \
    -lsimdjson -lyaml-cpp -o "$out/fuzz_$target"
else
  "$clang" -g -O1 -std=c11 -Wall -Wextra -Werror \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    "${inc[@]}" "tests/fuzz/fuzz_$target.c" -o "$out/fuzz_$target"
fi
args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
  -artifact_prefix="$out/artifacts/" "${extra[@]}")
[ "$jobs" -gt 1 ] && args+=(-fork="$jobs")
echo "scripts/fuzz.sh: fuzzing $target for ${secs}s, corpus $out/corpus"
"$out/fuzz_$target" "${args[@]}" "$out/corpus" "$seeds"
