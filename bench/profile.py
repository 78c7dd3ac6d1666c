#!/usr/bin/env python3
"""Where the header programs' per-request cost goes: perf profiles of the keep-alive HTTP
workload of bench.py, agent default (A) versus --no-header-context (B).

Started by `bench/run.sh --profile [--duration S]` (needs perf: Debian's linux-perf).
Same node as bench.py; for each mode one wrk run in the client pod while `perf record -a
-e cpu-clock` samples for duration-2 seconds; then the share of the samples of wrk and the
server spent in BPF programs, BPF helpers/hooks and the sockmap (tcp_bpf, psock, sk_msg)
path, and the top BPF-related symbols. perf data files are kept in a temp dir (printed).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402

GROUPS = [
    ("BPF programs", re.compile(r"^bpf_prog_")),
    ("sockmap / tcp_bpf / psock / sk_msg", re.compile(
        r"tcp_bpf|sk_psock|sk_msg|sock_map|sock_hash|psock")),
    ("BPF helpers and hook glue", re.compile(
        r"^bpf_|^__bpf|cgroup_bpf|bpf_trace|sk_storage|bpf_local|trampoline")),
]


def breakdown(data, comms):
    r = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "symbol",
                        "--comm", ",".join(comms), "--stdio", "-g", "none"],
                       capture_output=True, text=True, timeout=120)
    groups = {g: 0.0 for g, _ in GROUPS}
    total, top = 0.0, []
    for line in r.stdout.splitlines():
        m = re.match(r"^\s*([0-9.]+)%\s+\[[k.]\]\s+(\S+)", line)
        if not m:
            continue
        pct, sym = float(m.group(1)), m.group(2)
        total += pct
        for g, rx in GROUPS:
            if rx.search(sym):
                groups[g] += pct
                top.append((pct, sym))
                break
    return total, groups, sorted(top, reverse=True)[:15]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tools", required=True)
    ap.add_argument("--bin", default=bench.harness.agent_bin())
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--connects", type=int, default=150000,
                    help="connects of the profiled connect loop (it stops at --duration's end)")
    ap.add_argument("--lo-up", action="store_true", help="bring lo up first (fresh netns)")
    ap.add_argument("--loopback", action="store_true", help="pods on loopback addresses of one "
                    "namespace (bench.py's older shape)")
    args = ap.parse_args()
    args.max_loop_seconds = 60
    if args.lo_up:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    if subprocess.run(["sh", "-c", "command -v perf"], capture_output=True).returncode:
        sys.exit("profile: perf not found (apt-get install linux-perf)")
    out = tempfile.mkdtemp(prefix="envsteer-bench-perf-")
    b = bench.Bench(args)
    results = {}

    def sample(key, workload, comms, warmup, join_s):
        """perf record -a for duration-2 s while workload() runs in a thread."""
        res = {}
        t = threading.Thread(target=lambda: res.update(workload()))
        t.start()
        time.sleep(warmup)
        data = os.path.join(out, "perf-%s.data" % key)
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-a", "-o", data, "--",
                        "sleep", str(max(1, args.duration - 2))],
                       capture_output=True, timeout=args.duration + 60)
        t.join(join_s)
        results[key] = (res, breakdown(data, comms))

    try:
        b.setup()
        url = "http://%s:%d/" % (bench.SVC_IP, bench.SVC_PORT)
        # keep-alive in both modes, and one connection per request with the header programs
        for mode, close in (("header", False), ("noheader", False), ("header", True)):
            b.set_agent_mode(mode)
            sample(mode + ("-close" if close else ""),
                   lambda: b.wrk(url, close, args.duration, "perf-" + mode),
                   ["wrk", "httpd"], 1, args.duration + 60)
        # the connect loop (connect + close to the service address, header programs on)
        b.set_agent_mode("header")
        sample("connect",
               lambda: b.connloop(b.client_cg(), bench.SVC_IP, bench.SVC_PORT, args.connects,
                                  "perf-connect", b.server_cg()),
               ["connloop", "httpd"], 0.5, args.max_loop_seconds + 60)
    finally:
        b.close()
    for key, (res, (total, groups, top)) in results.items():
        what = {"header": "agent default (header programs on), keep-alive",
                "noheader": "--no-header-context, keep-alive",
                "header-close": "agent default, one connection per request",
                "connect": "agent default, connect loop (connect + close)"}[key]
        if key == "connect":
            print("== %s: p50 %.1f us, %.1f us CPU per connect (client+server cgroups)"
                  % (what, res.get("p50_ns", 0) / 1000.0, res.get("cpu_ns", 0) / 1000.0))
            print("   samples in connloop + httpd: %.1f%% of all" % total)
        else:
            print("== %s: %.0f req/s, %.1f us CPU per request (client+server cgroups)"
                  % (what, res.get("rps", 0), res.get("cpu_us", 0)))
            print("   samples in wrk + httpd: %.1f%% of all" % total)
        for g, pct in groups.items():
            print("   %-36s %5.2f%% of all samples" % (g, pct))
        for pct, sym in top:
            print("      %5.2f%%  %s" % (pct, sym))
    print("perf data: %s" % out)


if __name__ == "__main__":
    main()
