"""Start-up of agent binaries side by side on the control suite's cluster (bench.py
suite_control: 10 000 services, 100 000 pods, 1 000 envs, 64 local pods), interleaved
(ABBA), each start fresh (pins removed between). Prints per start: start -> /readyz, peak
and ready RSS, load average, the agent's start-up lines; at the end the medians.

  unshare -n -- bash -c 'ip link set lo up && python3 bench/startup_ab.py BIN_A,BIN_B ROUNDS'

PERF=<seconds>: the last binary's starts under `perf record -a` (DWARF stacks) into
/tmp/startup_ab.perf.data. Run as root (cgroups, BPF)."""
import os, re, sys, time, signal
_here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_here, "..", "tests", "e2e"))
sys.path.insert(0, _here)
import harness  # noqa: E402
import bench  # noqa: E402

bins = sys.argv[1].split(",")
rounds = int(sys.argv[2])
n_svc, n_pod, n_env, n_ns, n_local = 10000, 100000, 1000, 100, 64
cpn = harness.Node("ab-cp", default_env="dev", bin=bins[0], log_level="info")
res = {b: [] for b in bins}
try:
    with open(os.path.join(cpn.tmp, "limits.yaml"), "w") as f:
        f.write(bench.LIMITS_YAML)
    bench.write_control_cluster(cpn, n_svc, max(1, n_pod // n_svc), n_env, n_ns, n_local)
    for r in range(rounds):
        for b in (bins if r % 2 == 0 else bins[::-1]):
            cpn.bin = b
            perf = None
            if os.environ.get("PERF") and b == bins[-1]:
                import subprocess
                perf = subprocess.Popen(["perf", "record", "-a", "-F", "499", "--call-graph", "dwarf,8192",
                                         "-o", "/tmp/startup_ab.perf.data", "--", "sleep", os.environ["PERF"]],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            t0 = time.monotonic()
            cpn.start_agent(["--config", os.path.join(cpn.tmp, "limits.yaml")], timeout=600)
            wall = time.monotonic() - t0
            hwm = bench.proc_status_kib(cpn.agent.pid, "VmHWM") / 1024.0
            rss = bench.proc_status_kib(cpn.agent.pid, "VmRSS") / 1024.0
            log = cpn.agent_log_text(200000)
            lines = [l for l in log.splitlines() if re.search(r"start-up|model of .* built|applied start-up", l)]
            if perf:
                perf.wait()
            cpn.stop_agent(signal.SIGTERM)
            cpn.uninstall(check=False)
            os.makedirs(cpn.pin_dir, exist_ok=True)
            res[b].append(wall)
            print("round %d %s: start->ready %.2f s, peak %.0f MiB, ready RSS %.0f MiB, load %s" % (
                r, b, wall, hwm, rss, open("/proc/loadavg").read().split()[:3]), flush=True)
            for l in lines:
                print("   " + l[24:], flush=True)
    for b in bins:
        v = sorted(res[b]); print(b, "median %.2f" % v[len(v) // 2], ["%.2f" % x for x in res[b]])
finally:
    cpn.close()
