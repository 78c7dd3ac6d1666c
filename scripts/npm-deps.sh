#!/usr/bin/env bash
# Installs the npm packages of the e2e tests (tests/e2e/tiers/package.json + package-lock.json:
# @grpc/grpc-js for the gRPC bridge tier) into a fixed directory, $ENVSTEER_NPM_DIR (default
# /var/cache/envsteer-npm). The tests find them there (NODE_PATH=<dir>/node_modules).
# Test-only; npm is the one extra registry the tests use. Idempotent: does nothing when the
# installed lock file is the committed one.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=tests/e2e/tiers
DIR=${ENVSTEER_NPM_DIR:-/var/cache/envsteer-npm}

if ! command -v npm >/dev/null 2>&1; then
  echo "npm-deps: npm not found (Debian: apt-get install npm; scripts/install-deps.sh does)" >&2
  exit 1
fi
if [ -f "$DIR/node_modules/@grpc/grpc-js/package.json" ] && [ -f "$DIR/package-lock.json" ] \
   && cmp -s "$SRC/package-lock.json" "$DIR/package-lock.json" \
   && cmp -s "$SRC/package.json" "$DIR/package.json"; then
  echo "npm-deps: $DIR up to date"
  exit 0
fi
mkdir -p "$DIR"
cp "$SRC/package.json" "$DIR/package.json"
if [ -f "$SRC/package-lock.json" ]; then
  cp "$SRC/package-lock.json" "$DIR/package-lock.json"
  (cd "$DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
else
  (cd "$DIR" && npm install --no-audit --no-fund --ignore-scripts --loglevel=error)
fi
echo "npm-deps: installed $(cd "$DIR" && node -p "require('@grpc/grpc-js/package.json').version" 2>/dev/null || echo '?') into $DIR"
