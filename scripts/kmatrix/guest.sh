#!/bin/sh
# Stage 2 of the kernel-matrix guest: PID 1 on the overlay root (the host's root
# filesystem, read-only, with a tmpfs on top), the work share at /kmx. Mounts what
# the agent and the e2e tests need, runs the probe and pytest, writes the results
# to /kmx/out and powers the guest off. Parameters come from /kmx/params.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
out=/kmx/out
off() {
	sync
	busybox poweroff -f
	sleep 30
}
trap off EXIT

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
# The guest kernel's modules (veth, sch_*, ...), for modprobe.
mkdir -p /lib/modules && mount -t tmpfs tmpfs /lib/modules && mkdir -p "/lib/modules/$(uname -r)" &&
	mount --bind "/kmx/kernel/lib/modules/$(uname -r)" "/lib/modules/$(uname -r)"
# cgroup v2 controllers for the tests' subtrees (as systemd enables them on a host).
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
	echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
done
ip link set lo up
hostname kmatrix

. /kmx/params
mkdir -p "$out"
echo "kmatrix: kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo)"
cd "$KMX_REPO" || exit 1
export ENVSTEER_BIN="$KMX_BIN"

t0=$(date +%s)
echo "kmatrix: probe (one agent start, one steered connect)"
python3 scripts/kmatrix/probe.py --out "$out/features.json" >"$out/probe.log" 2>&1
echo $? >"$out/probe.rc"
cat "$out/probe.log"
echo "$(($(date +%s) - t0))" >"$out/guest_seconds"
"$KMX_BIN" status --json >"$out/status.json" 2>"$out/status.err"
if [ -n "$KMX_BPF_OBJ" ]; then
	python3 scripts/kmatrix/verifier_check.py --obj "$KMX_BPF_OBJ" --out "$out/verifier.json" \
		>"$out/verifier.log" 2>&1
	cat "$out/verifier.log"
fi
echo "kmatrix: probe took $(($(date +%s) - t0)) s"

[ -n "$KMX_TESTS" ] || exit 0
t1=$(date +%s)
echo "kmatrix: pytest $KMX_TESTS"
# shellcheck disable=SC2086  # KMX_TESTS is a list of paths / node ids
python3 -m pytest -p no:cacheprovider -rA --durations=0 --junitxml="$out/junit.xml" \
	$KMX_PYTEST_ARGS $KMX_TESTS >"$out/pytest.log" 2>&1
rc=$?
echo "kmatrix: pytest exit $rc after $(($(date +%s) - t1)) s"
tail -n 60 "$out/pytest.log"
echo "$rc" >"$out/pytest.rc"
echo "$(($(date +%s) - t0))" >"$out/guest_seconds"
