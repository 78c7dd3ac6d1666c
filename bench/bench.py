#!/usr/bin/env python3
"""envsteer benchmark driver (started by bench/run.sh, which builds the tools first).

One node made with the e2e harness (tests/e2e/harness.py): a cgroup v2 subtree steered by
one agent (--default-env dev), pods in cgroups on 127.1.240.x, one service on 127.96.240.1.
Every suite measures two variants side by side, interleaving rounds A B A B ..., and reports
per row the median and min-max over the rounds of each variant and the ratio A/B.

Suites (issue 5 numbering; more are added to SUITES):
  connect  (1) connect()+close() loop: managed pod -> service address with every envsteer
           program attached (A), versus an unmanaged cgroup -> a pod address with no envsteer
           program on the path (B); plus, for information, managed pod -> pod address (C).
  header   (5) HTTP/1.1 from a managed client pod (wrk, tagged X-Virtual-Env: dev.proj1) to a
           C server in a managed pod through the service address: agent with the header
           programs (A, the default) versus the agent with --no-header-context (B). Keep-alive
           and one connection per request.

Python 3 standard library only. Everything runs on 127.0.0.0/8, every run is bounded in
time, and the node's close() stops every process by PID and removes cgroups and pins.
"""
import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
import harness  # noqa: E402

NS = "bench"
SVC_IP, SVC_PORT, TARGET_PORT = "127.96.240.1", 80, 8080
POD_DEV_IP = "127.1.240.10"      # web-dev   (dev)
POD_P1_IP = "127.1.240.11"       # web-proj1 (dev.proj1): where tagged traffic lands
PLAIN_IP = "127.1.240.12"        # the same server in an unmanaged cgroup (no envsteer)
CLIENT_IP = "127.1.240.20"       # client pod (dev.proj1), runs the loops and wrk
ENV_HEADER = ("X-Virtual-Env", "dev.proj1")

WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH-JSON {"requests":%d,"duration_us":%d,"err_connect":%d,' ..
    '"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,"p50_us":%d,' ..
    '"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


class BenchError(Exception):
    pass


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# --------------------------------------------------------------------------- results

class Row:
    """One table row: a quantity measured for variant A and variant B in every round."""

    def __init__(self, key, what, unit, a_name, b_name, better, target=None, fmt="%.0f"):
        self.key, self.what, self.unit = key, what, unit
        self.a_name, self.b_name = a_name, b_name
        self.better = better          # "lower" or "higher": which way A is better
        self.target = target          # (op, value) on the ratio A/B, e.g. ("<=", 1.10)
        self.fmt = fmt
        self.a, self.b = [], []

    def add(self, a=None, b=None):
        if a is not None:
            self.a.append(float(a))
        if b is not None:
            self.b.append(float(b))

    def ratio(self):
        if not self.a or not self.b or statistics.median(self.b) == 0:
            return None
        return statistics.median(self.a) / statistics.median(self.b)

    def paired(self):
        return [x / y for x, y in zip(self.a, self.b) if y]

    def met(self):
        r = self.ratio()
        if self.target is None or r is None:
            return "-"
        op, v = self.target
        ok = r <= v if op == "<=" else r >= v
        return "yes" if ok else "NO"

    def target_text(self):
        return "-" if self.target is None else "%s %s" % self.target

    def cell(self, xs):
        if not xs:
            return "n/a"
        return "%s [%s-%s]" % (self.fmt % statistics.median(xs), self.fmt % min(xs),
                               self.fmt % max(xs))

    def as_dict(self):
        return {"key": self.key, "what": self.what, "unit": self.unit, "a": self.a_name,
                "b": self.b_name, "a_rounds": self.a, "b_rounds": self.b,
                "ratio_of_medians": self.ratio(), "paired_ratios": self.paired(),
                "target": self.target, "met": self.met()}


def render_table(rows):
    head = ["row", "measurement", "A", "A: median [min-max]", "B", "B: median [min-max]",
            "A/B (medians)", "A/B per round: median [min-max]", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = r.paired()
        pc = "%.3f [%.3f-%.3f]" % (statistics.median(p), min(p), max(p)) if p else "n/a"
        ratio = r.ratio()
        lines.append("| " + " | ".join([
            r.key, "%s (%s)" % (r.what, r.unit), r.a_name, r.cell(r.a), r.b_name, r.cell(r.b),
            "%.3f" % ratio if ratio is not None else "n/a", pc, r.target_text(), r.met()]) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- node set-up

def cpu_usec(cg):
    """usage_usec of a cgroup v2 directory (the base stats exist without the cpu controller;
    includes descendants, also removed ones)."""
    with open(os.path.join(cg, "cpu.stat")) as f:
        for line in f:
            k, v = line.split()
            if k == "usage_usec":
                return int(v)
    raise BenchError("no usage_usec in %s/cpu.stat" % cg)


class Bench:
    def __init__(self, args):
        self.args = args
        self.tools = args.tools
        self.node = None
        self.agent_mode = None
        self.plain_server_cg = None
        self.plain_client_cg = None
        self.notes = []
        self.attached = {}
        self._n = 0

    # -- processes in cgroups (the harness's way: sh writes its pid to cgroup.procs, execs)

    def run_in_cgroup(self, parent_cg, argv, timeout, name):
        """Run argv in a fresh child cgroup of parent_cg (like the harness's pod clients),
        wait (bounded), remove the child cgroup; returns (rc, stdout)."""
        self._n += 1
        d = os.path.join(parent_cg, "client-b%d" % self._n)
        os.mkdir(d)
        try:
            proc = self.node._popen(argv, d, "bench-%s.log" % name, stdout=subprocess.PIPE)
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                harness._terminate(proc)
                proc.communicate()
                raise BenchError("%s did not finish within %.0fs" % (argv[0], timeout))
            finally:
                if proc in self.node.procs:
                    self.node.procs.remove(proc)
            return proc.returncode, out
        finally:
            self.node._rmdir_cgroup(d)

    def start_httpd(self, cgroup_dir, ip, name):
        ready = os.path.join(self.node.tmp, "ready-%s" % name)
        argv = [os.path.join(self.tools, "httpd"), ip, str(TARGET_PORT), "--ready-file", ready,
                "--max-seconds", "3600"]
        proc = self.node._popen(argv, cgroup_dir, "httpd-%s.log" % name)
        harness.wait_until(lambda: os.path.exists(ready) or proc.poll() is not None, 10,
                           what="httpd %s" % name)
        if proc.poll() is not None:
            raise BenchError("httpd %s exited:\n%s" % (name, harness._read_file(
                os.path.join(self.node.log_dir, "httpd-%s.log" % name), 2000)))
        return proc

    def setup(self):
        harness.ensure_bpffs()
        stale = harness.sweep_stale(self.args.bin)
        if stale:
            log("removed leftovers of an earlier killed run: %s" % stale)
        n = self.node = harness.Node("bench", default_env="dev", bin=self.args.bin,
                                     log_level="info")
        n.add_service(NS, "web", SVC_IP, port=SVC_PORT, target_port=TARGET_PORT,
                      protocols=("TCP",))
        n.add_pod(NS, "web-dev", POD_DEV_IP, env="dev", app="web", port=TARGET_PORT)
        n.add_pod(NS, "web-proj1", POD_P1_IP, env="dev.proj1", app="web", port=TARGET_PORT)
        n.add_pod(NS, "client", CLIENT_IP, env="dev.proj1", app="client", port=TARGET_PORT)
        n.write_manifests()
        # The "no envsteer" world: the same server and client binaries in cgroups at the same
        # depth, outside the steered subtree (the harness's sibling subtree, removed by close()).
        self.plain_server_cg = os.path.join(n.remote_cgroup_dir, "pod-plain-server")
        self.plain_client_cg = os.path.join(n.remote_cgroup_dir, "pod-plain-client")
        os.mkdir(self.plain_server_cg)
        os.mkdir(self.plain_client_cg)
        for pod in ("web-dev", "web-proj1"):
            p = n.pods["%s/%s" % (NS, pod)]
            self.start_httpd(p.cgroup_dir, p.ip, pod)
        self.start_httpd(self.plain_server_cg, PLAIN_IP, "plain")
        self.set_agent_mode("header")
        self.check_unmanaged_has_no_programs()

    def client_cg(self):
        return self.node.pods[NS + "/client"].cgroup_dir

    def server_cg(self):
        return self.node.pods[NS + "/web-proj1"].cgroup_dir

    def effective_programs(self, cg):
        r = subprocess.run(["bpftool", "-j", "cgroup", "show", cg, "effective"],
                           capture_output=True, text=True, timeout=10)
        text = r.stdout.strip()
        try:
            return [p.get("name", "?") for p in (json.loads(text) if text else [])]
        except ValueError:
            return [text]

    def check_unmanaged_has_no_programs(self):
        managed = self.effective_programs(self.client_cg())
        plain = self.effective_programs(self.plain_client_cg)
        self.attached["managed client cgroup (effective)"] = managed
        self.attached["unmanaged client cgroup (effective)"] = plain
        if not managed:
            raise BenchError("no program attached to the managed client cgroup")
        if plain:
            self.notes.append("WARNING: the unmanaged cgroup has programs attached (%s): "
                              "baseline B is not program-free" % ", ".join(plain))

    def set_agent_mode(self, mode):
        """mode "header": agent defaults (every program); "noheader": --no-header-context."""
        if self.agent_mode == mode and self.node.agent_running():
            return
        t0 = time.monotonic()
        if self.node.agent_running():
            self.node.stop_agent()
        extra = ["--no-header-context"] if mode == "noheader" else []
        self.node.start_agent(extra, timeout=30)
        self.agent_mode = mode
        links = sorted(os.listdir(os.path.join(self.node.pin_dir, "links")))
        hdr_links = [l for l in links if l in ("es_http_ingress", "es_sock_recv_length",
                                                "es_sockops_prog")]
        if mode == "header" and len(hdr_links) != 3:
            raise BenchError("header mode but header program links are %s (links: %s)"
                             % (hdr_links, links))
        if mode == "noheader" and hdr_links:
            raise BenchError("--no-header-context but still linked: %s" % hdr_links)
        self.attached["links, agent %s" % ("default" if mode == "header"
                                           else "--no-header-context")] = links
        log("agent mode %s ready in %.1fs" % (mode, time.monotonic() - t0))

    def counters(self):
        try:
            return self.node.counters()
        except Exception as e:  # noqa: BLE001
            raise BenchError("cannot read counters: %s" % e)

    def close(self):
        if self.node is not None:
            self.node.close()
            if self.node.cleanup_problems:
                log("cleanup problems: %s" % self.node.cleanup_problems)
            self.node = None

    # -- tools

    def connloop(self, cg, ip, port, count, name, server_cg=None):
        """Run the connect loop in a child of cg; with server_cg, also the CPU time that cg
        and server_cg used, per connect (cpu_ns)."""
        argv = [os.path.join(self.tools, "connloop"), ip, str(port), str(count),
                str(self.args.max_loop_seconds)]
        cgs = [cg] + ([server_cg] if server_cg else [])
        u0 = sum(cpu_usec(c) for c in cgs)
        rc, out = self.run_in_cgroup(cg, argv, self.args.max_loop_seconds + 30, name)
        u1 = sum(cpu_usec(c) for c in cgs)
        try:
            res = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError("connloop %s printed no result (rc %s): %r" % (name, rc, out))
        if rc != 0 or res.get("errors"):
            raise BenchError("connloop %s -> %s:%d failed: %s" % (name, ip, port, res))
        res["cpu_ns"] = (u1 - u0) * 1000.0 / max(1, res["count"])
        return res

    def wrk(self, url, close, duration, name):
        lua = os.path.join(self.node.tmp, "report.lua")
        if not os.path.exists(lua):
            with open(lua, "w") as f:
                f.write(WRK_LUA)
        argv = ["wrk", "-t", str(self.args.threads), "-c", str(self.args.connections),
                "-d", "%ds" % duration, "--timeout", "2s", "-s", lua,
                "-H", "%s: %s" % ENV_HEADER]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(url)
        cgs = [self.client_cg(), self.server_cg()]
        u0 = sum(cpu_usec(c) for c in cgs)
        rc, out = self.run_in_cgroup(self.client_cg(), argv, duration + 30, name)
        u1 = sum(cpu_usec(c) for c in cgs)
        m = re.search(r"^BENCH-JSON (\{.*\})$", out or "", re.M)
        if rc != 0 or not m:
            raise BenchError("wrk %s failed (rc %s):\n%s" % (name, rc, out))
        res = json.loads(m.group(1))
        errs = sum(res[k] for k in res if k.startswith("err_"))
        if res["requests"] == 0 or errs > res["requests"] * 0.001:
            raise BenchError("wrk %s: %d requests, errors %s" % (name, res["requests"], res))
        res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
        res["cpu_us"] = (u1 - u0) / res["requests"]
        return res


# --------------------------------------------------------------------------- suites

def suite_connect(b):
    """Issue 5 item 1: connect() cost, all envsteer programs versus none."""
    a = b.args
    b.set_agent_mode("header")
    rows = {
        "connect_ns": Row("connect_ns", "connect+close, per-connect p50", "ns",
                          "envsteer: pod -> service", "no envsteer: pod IP", "lower",
                          ("<=", 1.10)),
        "connect_mean_ns": Row("connect_mean_ns", "connect+close, mean incl. stalls", "ns",
                               "envsteer: pod -> service", "no envsteer: pod IP", "lower"),
        "connect_cpu_ns": Row("connect_cpu_ns", "connect+close, CPU time of client+server "
                              "cgroups per connect", "ns", "envsteer: pod -> service",
                              "no envsteer: pod IP", "lower"),
        "connect_podip_ns": Row("connect_podip_ns", "connect+close, per-connect p50", "ns",
                                "managed pod -> pod IP (programs run, no rewrite)",
                                "no envsteer: pod IP", "lower"),
    }
    vip_cg, plain_cg = b.client_cg(), b.plain_client_cg
    # warm-up (not counted), and a check that the service address really is steered
    c0 = b.counters()
    b.connloop(vip_cg, SVC_IP, SVC_PORT, max(200, a.connects // 10), "warm-vip")
    c1 = b.counters()
    if c1.get("steered_own_env", 0) - c0.get("steered_own_env", 0) < max(200, a.connects // 10):
        raise BenchError("connects to the service were not steered (counters %s -> %s)"
                         % (c0, c1))
    b.connloop(plain_cg, PLAIN_IP, TARGET_PORT, max(200, a.connects // 10), "warm-plain")
    raw = []
    for i in range(a.rounds):
        ra = b.connloop(vip_cg, SVC_IP, SVC_PORT, a.connects, "vip", b.server_cg())
        rb = b.connloop(plain_cg, PLAIN_IP, TARGET_PORT, a.connects, "plain",
                        b.plain_server_cg)
        rc = b.connloop(vip_cg, POD_P1_IP, TARGET_PORT, a.connects, "podip", b.server_cg())
        rows["connect_ns"].add(ra["p50_ns"], rb["p50_ns"])
        rows["connect_mean_ns"].add(ra["mean_ns"], rb["mean_ns"])
        rows["connect_cpu_ns"].add(ra["cpu_ns"], rb["cpu_ns"])
        rows["connect_podip_ns"].add(rc["p50_ns"], rb["p50_ns"])
        raw.append({"round": i + 1, "envsteer": ra, "plain": rb, "podip": rc})
        log("connect round %d/%d: envsteer p50 %d ns, plain %d ns, pod IP %d ns "
            "(stalls %d/%d/%d)" % (i + 1, a.rounds, ra["p50_ns"], rb["p50_ns"], rc["p50_ns"],
                                   ra["stalls"], rb["stalls"], rc["stalls"]))
    return list(rows.values()), raw


def suite_header(b):
    """Issue 5 item 5 / issue 3: per-request cost of the header programs."""
    a = b.args
    url = "http://%s:%d/" % (SVC_IP, SVC_PORT)
    variants = [("ka", False, "keep-alive"), ("close", True, "one connection per request")]
    rows = {}
    for v, _, label in variants:
        for q, unit, better, target, what in (
                ("rps", "req/s", "higher", (">=", 0.97), "RPS"),
                ("p50_us", "us", "lower", None, "latency p50"),
                ("p99_us", "us", "lower", None, "latency p99"),
                ("cpu_us", "us", "lower", None, "CPU time of client+server cgroups per request")):
            if v == "close" and q == "rps":
                target = None  # issue 3/5 target is on keep-alive traffic
            k = "http_%s_%s" % (v, q)
            rows[k] = Row(k, "HTTP %s, %s" % (label, what), unit, "header programs on",
                          "--no-header-context", better, target,
                          fmt="%.1f" if q == "cpu_us" else "%.0f")
    # warm-up in each mode (not counted); also proves the programs see the header or not
    raw = []
    for i in range(a.rounds):
        rec = {"round": i + 1}
        for mode in ("header", "noheader"):
            b.set_agent_mode(mode)
            if i == 0:
                b.wrk(url, False, 1, "warm-" + mode)
            c0 = b.counters()
            res = {}
            for v, close, _ in variants:
                res[v] = b.wrk(url, close, a.duration, "%s-%s" % (v, mode))
            c1 = b.counters()
            delta = {k: c1.get(k, 0) - c0.get(k, 0) for k in c1}
            found = delta.get("header_found", 0)
            if mode == "header" and found < res["ka"]["requests"] // 2:
                raise BenchError("header programs on, but header_found grew by %d for %d "
                                 "requests: not measuring what we think" %
                                 (found, res["ka"]["requests"]))
            if mode == "noheader" and found:
                raise BenchError("--no-header-context, but header_found grew by %d" % found)
            for v, _, _ in variants:
                for q in ("rps", "p50_us", "p99_us", "cpu_us"):
                    row = rows["http_%s_%s" % (v, q)]
                    row.add(**{("a" if mode == "header" else "b"): res[v][q]})
            rec[mode] = {"results": res, "counter_delta": {k: x for k, x in delta.items() if x}}
            log("header round %d/%d %s: keep-alive %.0f rps p99 %d us, per-conn %.0f rps" %
                (i + 1, a.rounds, mode, res["ka"]["rps"], res["ka"]["p99_us"],
                 res["close"]["rps"]))
        raw.append(rec)
    return list(rows.values()), raw


SUITES = {"connect": suite_connect, "header": suite_header}


# --------------------------------------------------------------------------- BPF run time

def our_programs(pin_dir):
    """{prog id: name} of the programs that use this node's pinned maps."""
    map_ids = set()
    mdir = os.path.join(pin_dir, "maps")
    for f in os.listdir(mdir):
        r = subprocess.run(["bpftool", "-j", "map", "show", "pinned", os.path.join(mdir, f)],
                           capture_output=True, text=True, timeout=10)
        try:
            map_ids.add(json.loads(r.stdout)["id"])
        except (ValueError, KeyError):
            pass
    r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                       timeout=20)
    allp = json.loads(r.stdout or "[]")
    # programs of one BPF object share its BTF: that also finds programs that use no map
    btf = {p.get("btf_id") for p in allp if map_ids & set(p.get("map_ids", []))} - {None, 0}
    return {p["id"]: p for p in allp
            if map_ids & set(p.get("map_ids", [])) or p.get("btf_id") in btf}


def prog_stats(b):
    """With kernel.bpf_stats_enabled=1 (restored afterwards): run time per program, per
    request, for one keep-alive and one per-connection wrk run and one connect loop."""
    a = b.args
    b.set_agent_mode("header")
    path = "/proc/sys/kernel/bpf_stats_enabled"
    old = open(path).read().strip()
    out = []
    try:
        with open(path, "w") as f:
            f.write("1")
        url = "http://%s:%d/" % (SVC_IP, SVC_PORT)
        for name, fn in (
                ("keep-alive", lambda: b.wrk(url, False, a.duration, "stats-ka")),
                ("per-connection", lambda: b.wrk(url, True, a.duration, "stats-close")),
                ("connect loop", lambda: b.connloop(b.client_cg(), SVC_IP, SVC_PORT,
                                                    a.connects, "stats-vip"))):
            before = our_programs(b.node.pin_dir)
            res = fn()
            after = our_programs(b.node.pin_dir)
            ops = res.get("requests") or res.get("count")
            progs = []
            for pid, p in after.items():
                q = before.get(pid, {})
                cnt = p.get("run_cnt", 0) - q.get("run_cnt", 0)
                ns = p.get("run_time_ns", 0) - q.get("run_time_ns", 0)
                if cnt:
                    progs.append({"name": p.get("name"), "type": p.get("type"), "runs": cnt,
                                  "ns_per_run": ns / cnt, "runs_per_op": cnt / ops,
                                  "ns_per_op": ns / ops})
            progs.sort(key=lambda x: -x["ns_per_op"])
            out.append({"workload": name, "ops": ops, "programs": progs,
                        "total_ns_per_op": sum(x["ns_per_op"] for x in progs)})
    finally:
        with open(path, "w") as f:
            f.write(old)
    return out


def render_prog_stats(stats):
    lines = ["| workload | program | type | runs per op | ns per run | ns per op |",
             "|---|---|---|---|---|---|"]
    for w in stats:
        for p in w["programs"]:
            lines.append("| %s | %s | %s | %.2f | %.0f | %.0f |" % (
                w["workload"], p["name"], p["type"], p["runs_per_op"], p["ns_per_run"],
                p["ns_per_op"]))
        lines.append("| %s | **total** | | | | **%.0f** |" % (w["workload"],
                                                               w["total_ns_per_op"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- report

def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(),
            "loadavg": open("/proc/loadavg").read().split()[:3],
            "commit": rev + ("+dirty" if dirty else "")}


def markdown(m, args, rows, attached, notes, stats):
    p = ["# envsteer benchmark: latest results", "",
         "- date: %s" % m["date"],
         "- kernel: %s; CPU: %s (%s CPUs); load average at start: %s" % (
             m["kernel"], m["cpu"], m["cpus"], " ".join(m["loadavg"])),
         "- envsteer commit: %s" % m["commit"],
         "- parameters: %d rounds (A B interleaved); connect loop %d connects per round; "
         "wrk -t%d -c%d, %d s per run%s" % (args.rounds, args.connects, args.threads,
                                            args.connections, args.duration,
                                            "; SMOKE RUN (sizes too small to mean anything)"
                                            if args.smoke else ""),
         "", "Ratios are A/B: median of A over median of B, and the median [min-max] of the "
         "per-round ratios. See bench/README.md for what each row measures.", "",
         render_table(rows), ""]
    if stats:
        p += ["## BPF run time per operation (kernel.bpf_stats_enabled=1, one extra run)", "",
              render_prog_stats(stats), ""]
    p += ["## Programs on the path", ""]
    for k, v in attached.items():
        p.append("- %s: %s" % (k, ", ".join(v) if v else "none"))
    p.append("- not in these lists: es_msg_prog (sk_msg) and es_skb_verdict (sk_skb) are "
             "attached to the pinned sockhash, which only sockops (header programs on) fills; "
             "es_sock_recv_length (tp_btf) is global, not per cgroup")
    if notes:
        p += ["", "## Notes", ""] + ["- " + n for n in notes]
    return "\n".join(p) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tools", required=True, help="directory with the compiled httpd, connloop")
    ap.add_argument("--bin", default=harness.agent_bin(), help="envsteer binary")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script works")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--connects", type=int, help="connects per connect-loop round")
    ap.add_argument("--duration", type=int, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=16, help="wrk -c")
    ap.add_argument("--threads", type=int, default=1, help="wrk -t")
    ap.add_argument("--max-loop-seconds", type=float, default=60.0)
    ap.add_argument("--only", default=",".join(SUITES), help="suites, comma-separated: %s"
                    % ", ".join(SUITES))
    ap.add_argument("--prog-stats", action="store_true",
                    help="also measure per-program BPF run time (bpf_stats_enabled, restored)")
    ap.add_argument("--out", help="markdown report (default bench/results/latest.md; "
                    "none for --smoke)")
    ap.add_argument("--json", help="raw results as JSON (default next to --out)")
    args = ap.parse_args()
    if args.smoke:
        args.rounds = args.rounds or 2
        args.connects = args.connects or 2000
        args.duration = args.duration or 1
    else:
        args.rounds = args.rounds or 7
        args.connects = args.connects or 20000
        args.duration = args.duration or 5
        args.out = args.out or os.path.join(HERE, "results", "latest.md")
    if args.out and not args.json:
        args.json = os.path.splitext(args.out)[0] + ".json"
    suites = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in suites:
        if s not in SUITES:
            ap.error("unknown suite %s" % s)
    if os.geteuid() != 0:
        ap.error("must run as root (cgroups, BPF)")

    def on_signal(sig, frame):
        raise SystemExit(128 + sig)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    m = machine()
    b = Bench(args)
    rows, raw, stats = [], {}, None
    t0 = time.monotonic()
    try:
        b.setup()
        for s in suites:
            log("suite %s" % s)
            r, x = SUITES[s](b)
            rows += r
            raw[s] = x
        if args.prog_stats:
            log("per-program BPF run time (kernel.bpf_stats_enabled=1 for this part only)")
            stats = prog_stats(b)
    except (BenchError, harness.HarnessError, TimeoutError) as e:
        logs = b.node.logs(4000) if b.node else ""
        sys.stderr.write("bench: FAILED: %s\n%s\n" % (e, logs))
        return 1
    finally:
        b.close()
    elapsed = time.monotonic() - t0

    table = render_table(rows)
    print()
    print("envsteer benchmark  %s  kernel %s  %s x%s  (%d rounds, %.0f s)" % (
        m["date"], m["kernel"], m["cpu"], m["cpus"], args.rounds, elapsed))
    print("A/B ratios; medians [min-max] over rounds%s" % ("  [SMOKE]" if args.smoke else ""))
    print(table)
    if stats:
        print()
        print(render_prog_stats(stats))
    for n in b.notes:
        print("note: " + n)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(markdown(m, args, rows, b.attached, b.notes, stats))
        log("wrote %s" % args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": m, "args": vars(args), "rows": [r.as_dict() for r in rows],
                       "raw": raw, "prog_stats": stats, "attached": b.attached,
                       "notes": b.notes, "elapsed_s": elapsed}, f, indent=1)
        log("wrote %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
