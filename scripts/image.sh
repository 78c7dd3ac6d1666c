#!/usr/bin/env bash
# Builds the agent's container image (the Dockerfile) with podman, on a Debian 12 base made
# here with debootstrap from the Debian mirror this machine's apt uses: no image registry is
# needed. Prints the image's size (uncompressed, and compressed as a registry stores it) and
# its layers. Run as root.
#
#   scripts/image.sh [--tag IMAGE] [--binary FILE] [--refresh-base] [--base-only] [--report FILE]
#
#   --tag IMAGE      the image to build (default localhost/envsteer:<project version>, the
#                    name daemonset/kustomization.yaml gives it)
#   --binary FILE    the runtime stage only, on this agent binary (built on this Debian 12,
#                    e.g. build/envsteer; stripped like the build stage's), instead of
#                    compiling it in the build stage: what tests/e2e/test_image.py does
#   --refresh-base   make the base again even if it is cached
#   --base-only      make (or find) the base image and print its name, nothing else
#   --report FILE    also write the timings, sizes and layers to FILE (markdown)
#
# The base is cached in $ENVSTEER_IMAGE_CACHE (default /var/cache/envsteer-image), keyed by the
# mirror, suite, architecture and the recipe below; a cached base is never refreshed by
# itself (--refresh-base does, e.g. after a Debian point release). The Dockerfile still names
# debian:bookworm-slim for users; here DEBIAN_IMAGE points it at the local base.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^project(envsteer VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
TAG=localhost/envsteer:$VERSION
REFRESH=0 BASE_ONLY=0 REPORT= BINARY=
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG=$2; shift 2 ;;
    --binary) BINARY=$(realpath "$2"); shift 2 ;;
    --refresh-base) REFRESH=1; shift ;;
    --base-only) BASE_ONLY=1; shift ;;
    --report) REPORT=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" -ne 0 ]; then
  echo "image.sh: run as root (debootstrap, podman)" >&2
  exit 1
fi
"$PWD/scripts/install-deps.sh" >/dev/null

SUITE=bookworm
ARCH=$(dpkg --print-architecture)
CACHE=${ENVSTEER_IMAGE_CACHE:-/var/cache/envsteer-image}
# What the base is made of; a change here makes a new cache key.
RECIPE="minbase ca-certificates slim-v1"

# The Debian mirror (and security mirror) of this machine's apt sources, one-line or deb822.
read -r MIRROR SECURITY < <(python3 - "$SUITE" <<'PY'
import glob, sys
suite = sys.argv[1]
entries = []  # (uri, suites, components)
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for ln in lines:
        w = ln.split("#", 1)[0].split()
        if len(w) >= 3 and w[0] == "deb":
            w = [x for x in w[1:] if not x.startswith("[") and not x.endswith("]") and "=" not in x]
            entries.append((w[0], w[1:2], w[2:]))
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for block in open(path).read().split("\n\n"):
        f = {}
        for ln in block.splitlines():
            if ln and not ln.startswith("#") and ":" in ln and not ln[0].isspace():
                k, v = ln.split(":", 1)
                f[k.strip().lower()] = v.split()
        if "deb" in f.get("types", []) and f.get("enabled", ["yes"])[0] != "no":
            for uri in f.get("uris", []):
                entries.append((uri, f.get("suites", []), f.get("components", [])))
main = next((u for u, s, c in entries if suite in s and "main" in c), None)
sec = next((u for u, s, c in entries if suite + "-security" in s and "main" in c), None)
if not main:
    sys.exit("image.sh: no 'deb ... %s main' in this machine's apt sources" % suite)
print(main.rstrip("/"), (sec or "-").rstrip("/"))
PY
)
KEY=$(printf '%s\n' "$MIRROR" "$SECURITY" "$SUITE" "$ARCH" "$RECIPE" | sha256sum | cut -c1-12)
BASE_TAR=$CACHE/base-$SUITE-$ARCH-$KEY.tar
BASE_IMAGE=localhost/envsteer-base:$SUITE-$KEY

now() { date +%s.%N; }
secs() { python3 -c "print('%.1f' % ($2 - $1))"; }

make_base() {
  local root=$1
  debootstrap --variant=minbase --include=ca-certificates --arch="$ARCH" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg "$SUITE" "$root" "$MIRROR" \
    > "$CACHE/debootstrap-$KEY.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap-$KEY.log" >&2; return 1; }
  # Slim like debian:bookworm-slim: no documentation, manual pages or translations, now or
  # from later package installs; no apt caches.
  cat > "$root/etc/dpkg/dpkg.cfg.d/envsteer-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{man,info,groff,lintian}/* "$root/var/cache/apt/"*.bin \
         "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/var/log/"*.log \
         "$root/var/cache/debconf/"*-old "$root/var/lib/dpkg/"*-old
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  cat > "$root/etc/apt/apt.conf.d/envsteer-slim" <<'EOF'
Acquire::Languages "none";
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
  rm -f "$root/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$MIRROR" "$SUITE" "$SUITE"
    if [ "$SECURITY" != "-" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$SECURITY" "$SUITE"
    fi
  } > "$root/etc/apt/sources.list.d/debian.sources"
  : > "$root/etc/machine-id"
  echo "$SUITE-envsteer-base" > "$root/etc/hostname"
  tar --numeric-owner --xattrs -C "$root" -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  printf 'mirror %s\nsecurity %s\nsuite %s\narch %s\nrecipe %s\nmade %s\n' "$MIRROR" "$SECURITY" \
    "$SUITE" "$ARCH" "$RECIPE" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$BASE_TAR.info"
}

# ---- base (cached) ---------------------------------------------------------------------------
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9   # one maker at a time (CI and a developer may share the cache)
T0=$(now)
BASE_FROM=cache
if [ "$REFRESH" = 1 ] || [ ! -f "$BASE_TAR" ]; then
  BASE_FROM=debootstrap
  echo "image.sh: making the base with debootstrap ($MIRROR $SUITE $ARCH) -> $BASE_TAR" >&2
  work=$(mktemp -d "$CACHE/root.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  make_base "$work/root"
  rm -rf "$work"
  trap - EXIT
  podman untag "$BASE_IMAGE" "$BASE_IMAGE" >/dev/null 2>&1 || true   # images built on it keep their layers
fi
if ! podman image exists "$BASE_IMAGE"; then
  [ "$BASE_FROM" = cache ] && BASE_FROM="cache (imported)"
  podman import --quiet --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE $MIRROR ($(sed -n 's/^made //p' "$BASE_TAR.info"))" \
    "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi
T1=$(now)
flock -u 9
echo "image.sh: base $BASE_IMAGE from $BASE_FROM ($(secs "$T0" "$T1") s; made $(sed -n 's/^made //p' "$BASE_TAR.info"))" >&2
if [ "$BASE_ONLY" = 1 ]; then
  echo "$BASE_IMAGE"
  exit 0
fi

# ---- image -----------------------------------------------------------------------------------
# runc, the runtime containerd and CRI-O run pods with (crun refuses hybrid cgroup hosts that
# have a controller on cgroup v2). Limits the runtime can set without CAP_SYS_RESOURCE: podman
# would raise nofile above this process's hard limit, which fails where that capability is not
# in the bounding set (nproc: podman's default 32768, or less).
PODMAN=(podman --runtime runc)
ULIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=$(( $(ulimit -Hu) < 32768 ? $(ulimit -Hu) : 32768 )):$(( $(ulimit -Hu) < 32768 ? $(ulimit -Hu) : 32768 ))")
# --network=host: the RUN steps reach the Debian mirror the way this machine does (no bridge,
# no NAT rules); nothing of the host's network ends up in the image.
BUILD_LOG=$(mktemp /tmp/envsteer-image-build.XXXXXX.log)
CONTEXT_ARGS=()
BUILT_FROM="the Dockerfile's build stage (compiled in the container)"
if [ -n "$BINARY" ]; then
  # The build stage's output (/out/bin/envsteer) from a directory instead: podman then skips
  # that stage.
  bctx=$(mktemp -d /tmp/envsteer-image-binary.XXXXXX)
  install -D -m 0755 -s "$BINARY" "$bctx/out/bin/envsteer"
  CONTEXT_ARGS=(--build-context "build=$bctx")
  BUILT_FROM="$BINARY (runtime stage only)"
fi
old_id=$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
echo "image.sh: podman build -t $TAG from $BUILT_FROM (log $BUILD_LOG)" >&2
if ! "${PODMAN[@]}" build --network=host --pull=never --layers "${ULIMITS[@]}" "${CONTEXT_ARGS[@]}" \
      --build-arg DEBIAN_IMAGE="$BASE_IMAGE" -t "$TAG" -f Dockerfile . > "$BUILD_LOG" 2>&1; then
  tail -40 "$BUILD_LOG" >&2
  echo "image.sh: podman build failed (log $BUILD_LOG)" >&2
  exit 1
fi
T2=$(now)
cached_steps=$(grep -c -- '--> Using cache' "$BUILD_LOG" || true)
rm -f "$BUILD_LOG"
[ -n "$BINARY" ] && rm -rf "$bctx"
# the image this tag named before, unless something else still uses it
new_id=$(podman image inspect --format '{{.Id}}' "$TAG")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  podman rmi "$old_id" >/dev/null 2>&1 || true
fi

# ---- size and layers -------------------------------------------------------------------------
size_raw=$(podman image inspect --format '{{.Size}}' "$TAG")
# Compressed as a registry would store it: the layers pushed with gzip to a directory.
out=$(mktemp -d /tmp/envsteer-image-push.XXXXXX)
podman push --quiet --compress --compression-format gzip "$TAG" "dir:$out/img" >/dev/null
size_gz=$(python3 - "$out/img/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(sum(l["size"] for l in m["layers"]) + m["config"]["size"])
PY
)
rm -rf "$out"
T3=$(now)
mib() { python3 -c "print('%.1f MiB' % ($1 / 1048576))"; }
{
  echo "image $TAG ($(podman image inspect --format '{{.Id}}' "$TAG" | cut -c1-12))"
  echo "  base:        $BASE_IMAGE, from $BASE_FROM ($(secs "$T0" "$T1") s)"
  echo "  agent:       from $BUILT_FROM"
  echo "  build:       $(secs "$T1" "$T2") s ($cached_steps steps from podman's layer cache)"
  echo "  size:        $(mib "$size_raw") uncompressed, $(mib "$size_gz") compressed (gzip layers, as pushed)"
  echo "  layers (newest first):"
  podman history --format '    {{.Size}}\t{{.CreatedBy}}' "$TAG" | cut -c1-150
} > "/tmp/envsteer-image-summary.$$"
cat "/tmp/envsteer-image-summary.$$" >&2
if [ -n "$REPORT" ]; then
  {
    echo "# Container image build ($(date -u +%Y-%m-%d), \`scripts/image.sh\`)"
    echo
    echo "Machine: $(nproc) CPUs, kernel $(uname -r), podman $(podman version --format '{{.Client.Version}}')."
    echo
    echo '```text'
    cat "/tmp/envsteer-image-summary.$$"
    echo '```'
  } > "$REPORT"
fi
rm -f "/tmp/envsteer-image-summary.$$"
