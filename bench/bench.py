#!/usr/bin/env python3
"""envsteer benchmark driver (started by bench/run.sh, which builds the tools first).

One node made with the e2e topology (tests/e2e/topology.py): a network namespace with a bridge
where one agent runs (--default-env dev) on a cgroup v2 subtree; every pod, managed or not
(the unmanaged servers and clients of the "no envsteer" paths, nginx, the iptables client and
server), has a network namespace of its own with a veth into the bridge (198.18.1.x) and its
processes in a cgroup of its own; services are 198.19.0.x. So every path measured crosses the
same veths and bridge a pod's traffic crosses on a node. --loopback: the older shape, pods in
cgroups on loopback addresses of one namespace (127.1.240.x, one service on 127.96.240.1).
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
  http     (2) the same tagged HTTP load over four paths: (a) unmanaged client -> unmanaged
           server, (b) managed client -> service address with envsteer, (c) unmanaged client ->
           nginx routing on the env header -> unmanaged server, (d) in a netns of its own,
           client -> service address through kube-proxy-shaped iptables DNAT (rules in the
           client's namespace; with --loopback client and server share that netns); b against
           each.
  scale    (3) connect cost with N services (10 .. 100 000) loaded into envsteer through the
           agent, and as kube-proxy-shaped iptables rules in the netns.
  control  (4) a second node whose agent syncs 10 000 services / 100 000 pods / 1 000 envs
           from manifests, then single pod-label changes: sync time, event-to-map latency,
           RSS, map memory (a table of its own, not A/B rows).
  reroute  (issue 6) the cost of a request re-routed per request.
  issue17  the rows of issue 17's table side by side in each round, N services loaded:
           envsteer against direct and iptables DNAT (keep-alive, one connection per
           request, connect p50), and pods of the steered subtree that take no part against
           no envsteer.

bench/run.sh starts this script in a private network namespace (unshare -n, --lo-up); with
the topology the script itself then works from the node's namespace (setns), as a node process
would. Python 3 standard library only. Traffic stays inside the namespaces the run makes
(198.18.0.0/15, 198.19.0.0/16, 127.0.0.0/8 of its own namespaces), every run is bounded in
time, and close() stops every process by PID and removes cgroups, pins and namespaces.
"""
import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
import harness  # noqa: E402
import topology  # noqa: E402

NS = "bench"
SVC_IP, SVC_PORT, TARGET_PORT = "127.96.240.1", 80, 8080
POD_DEV_IP = "127.1.240.10"      # web-dev   (dev)
POD_P1_IP = "127.1.240.11"       # web-proj1 (dev.proj1): where tagged traffic lands
PLAIN_IP = "127.1.240.12"        # the same server in an unmanaged cgroup (no envsteer)
CLIENT_IP = "127.1.240.20"       # client pod (dev.proj1), runs the loops and wrk
PLAIN2_IP = "127.1.240.13"       # a second unmanaged server: the proxy's "dev" upstream
PROXY_IP, PROXY_PORT = "127.1.240.30", 80   # nginx header-routing proxy (unmanaged)
IPT_EP_IP = "127.1.240.14"       # the server behind the iptables DNAT (in the "ipt" netns)
NP_SERVER_IP = "127.1.240.15"    # a pod in the steered subtree that takes no part (issue 17)
NP_CLIENT_IP = "127.1.240.21"    # ... and a client pod that takes no part
# Map sizes for every agent of the run (the scaling suite loads 100 000 services; the
# defaults hold 65 536 frontends). Set before the first start: pinned maps keep their size.
LIMITS_YAML = "limits:\n  frontends: 262144\n  sets: 524288\n  slots: 524288\n"
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
        self._ipt = None
        self.extra_tables = []   # (title, markdown table) of suites that are not A/B rows
        self.metrics = []        # Metric rows of those tables (for the JSON)
        self.topo = None         # the topology (None: --loopback)
        self.cg_ip = {}          # cgroup dir -> the IPv4 address of its pod (topology)
        self.cg_ns = {}          # cgroup dir -> the network namespace of its pod (topology)

    def netns_of(self, cg):
        """The network namespace the processes of cgroup cg (a pod's) run in; None: this
        script's (--loopback)."""
        return self.cg_ns.get(cg)

    def managed_pod(self, name, ip, **kw):
        """A managed pod of the node (add_pod kwargs); returns its IPv4 address: ip with
        --loopback, else the address of its own namespace."""
        if self.topo is None:
            return self.node.add_pod(NS, name, ip, **kw).ip
        kw.setdefault("port", TARGET_PORT)
        pod = self.topo.add_pod(1, NS, name, **kw)
        self.cg_ns[pod.cgroup_dir] = pod.netns
        return pod.ip

    def plain_pod(self, cg_name):
        """An unmanaged pod: a cgroup outside the steered subtree and (topology) a network
        namespace of its own on the bridge. Returns (cgroup dir, IPv4 address or None)."""
        cg = self.remote_cg(cg_name)
        if self.topo is None:
            return cg, None
        if cg not in self.cg_ns:
            ns, v4, _ = self.node.make_pod_netns(cg_name)
            self.cg_ns[cg] = ns
            self.cg_ip[cg] = v4
        return cg, self.cg_ip[cg]

    # -- processes in cgroups (the harness's way: sh writes its pid to cgroup.procs, execs)

    def run_in_cgroup(self, parent_cg, argv, timeout, name, netns=None):
        """Run argv in a fresh child cgroup of parent_cg (like the harness's pod clients),
        in netns (a harness NetNS) if given; wait (bounded), remove the child cgroup;
        returns (rc, stdout)."""
        self._n += 1
        d = os.path.join(parent_cg, "client-b%d" % self._n)
        os.mkdir(d)
        netns = netns or self.netns_of(parent_cg)
        try:
            proc = self.node._popen(argv, d, "bench-%s.log" % name, netns,
                                    stdout=subprocess.PIPE)
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

    def start_httpd(self, cgroup_dir, ip, name, netns=None):
        ready = os.path.join(self.node.tmp, "ready-%s" % name)
        argv = [os.path.join(self.tools, "httpd"), ip, str(TARGET_PORT), "--ready-file", ready,
                "--max-seconds", "3600"]
        proc = self.node._popen(argv, cgroup_dir, "httpd-%s.log" % name,
                                netns or self.netns_of(cgroup_dir))
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
        # the agent's default participation: the labelled pods take part, np-* do not
        kw = dict(default_env="dev", bin=self.args.bin, log_level="info", participation=None)
        if self.args.loopback:
            n = self.node = harness.Node("bench", **kw)
            n.add_service(NS, "web", SVC_IP, port=SVC_PORT, target_port=TARGET_PORT,
                          protocols=("TCP",))
        else:
            self.topo = topology.Topology("bench", nodes=1, **kw)
            n = self.node = self.topo.node(1)
            self.topo.add_service(NS, "web", 1, port=SVC_PORT, target_port=TARGET_PORT,
                                  protocols=("TCP",))
        # the servers opt into the thread context, so the header suite measures its whole
        # cost (adopting a request's env on read, ending it on the response write)
        ctx = {"envsteer.io/thread-context": "on"}
        ips = {"SVC_IP": SVC_IP if self.topo is None else topology.SVC_V4 % 1}
        ips["POD_DEV_IP"] = self.managed_pod("web-dev", POD_DEV_IP, env="dev", app="web",
                                             port=TARGET_PORT, annotations=ctx)
        ips["POD_P1_IP"] = self.managed_pod("web-proj1", POD_P1_IP, env="dev.proj1", app="web",
                                            port=TARGET_PORT, annotations=ctx)
        ips["CLIENT_IP"] = self.managed_pod("client", CLIENT_IP, env="dev.proj1", app="client",
                                            port=TARGET_PORT)
        # pods of the node that take no part (no env label, no envsteer.io/enabled): issue 17
        ips["NP_SERVER_IP"] = self.managed_pod("np-server", NP_SERVER_IP, app="np",
                                               port=TARGET_PORT)
        ips["NP_CLIENT_IP"] = self.managed_pod("np-client", NP_CLIENT_IP, app="np-client",
                                               port=TARGET_PORT)
        n.write_manifests()
        # The "no envsteer" world: the same server and client binaries in cgroups at the same
        # depth, outside the steered subtree (the harness's sibling subtree, removed by close()),
        # in pod namespaces of their own on the same bridge (topology).
        self.plain_server_cg, ip = self.plain_pod("pod-plain-server")
        ips["PLAIN_IP"] = ip or PLAIN_IP
        self.plain_client_cg, _ = self.plain_pod("pod-plain-client")
        if self.topo is not None:
            for cg_name, var in (("pod-plain-server2", "PLAIN2_IP"), ("pod-proxy", "PROXY_IP"),
                                 ("pod-ipt-client", None), ("pod-ipt-server", "IPT_EP_IP"),
                                 ("pod-grpc-plain", "GRPC_PLAIN_IP"),
                                 ("pod-grpc-plain2", "GRPC_PLAIN2_IP"),
                                 ("pod-grpc-proxy", "GRPC_PROXY_IP")):
                _, ip = self.plain_pod(cg_name)
                if var:
                    ips[var] = ip
            ips["GRPC_VIP"] = topology.SVC_V4 % 2
            # this script works from the node's namespace, as a node process would (its probes
            # of the servers go over the bridge); the threads it starts later inherit it
            enter_netns(n.host.path)
        globals().update(ips)
        for pod in ("web-dev", "web-proj1"):
            p = n.pods["%s/%s" % (NS, pod)]
            self.start_httpd(p.cgroup_dir, p.ip, pod)
        self.start_httpd(self.plain_server_cg, PLAIN_IP, "plain")
        self.start_httpd(n.pods[NS + "/np-server"].cgroup_dir, NP_SERVER_IP, "np-server")
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
        extra = ["--config", self.config_file()]
        extra += ["--no-header-context"] if mode == "noheader" else []
        extra += ["--no-connect-hints"] if mode == "nohints" else []
        # the HTTP/2 endpoint: where the pods reach the node (the bridge), or loopback
        h2 = "127.0.0.1:0" if self.topo is None else topology.GW_V4 % 1 + ":0"
        extra += ["--h2-listen", h2] if mode == "h2" else []
        self.node.start_agent(extra, timeout=300)
        self.agent_mode = mode
        # global links at links/<prog>, the pods' at links/pods/<cgroup id>/<prog>
        links = sorted({f for _, _, files in os.walk(os.path.join(self.node.pin_dir, "links"))
                        for f in files})
        hdr_links = [l for l in links if l in ("es_http_ingress", "es_sock_recv_length",
                                                "es_sockops_prog")]
        if mode in ("header", "nohints") and len(hdr_links) != 3:
            raise BenchError("header mode but header program links are %s (links: %s)"
                             % (hdr_links, links))
        if mode == "noheader" and hdr_links:
            raise BenchError("--no-header-context but still linked: %s" % hdr_links)
        self.attached["links, agent %s" % {"header": "default", "noheader": "--no-header-context",
                                           "nohints": "--no-connect-hints"}.get(mode, mode)] = links
        log("agent mode %s ready in %.1fs" % (mode, time.monotonic() - t0))

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)

    def config_file(self):
        path = os.path.join(self.node.tmp, "limits.yaml")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(LIMITS_YAML)
        return path

    def remote_cg(self, name):
        """A cgroup outside the steered subtree (no envsteer program), removed by close()."""
        d = os.path.join(self.node.remote_cgroup_dir, name)
        os.makedirs(d, exist_ok=True)
        return d

    def ipt_netns(self):
        """The network namespace of the iptables variant: its own netfilter tables, so the
        host's are never touched and conntrack/NAT hooks exist only there. Topology: the ipt
        client's pod namespace (the rules DNAT its connects, OUTPUT chain; the server is a pod
        of its own on the bridge); --loopback: a namespace of its own (ip netns add
        envsteer-e2e-<pid>-bench-ipt, lo up) holding both. Deleted by close()."""
        if self._ipt is None:
            if self.topo is not None:
                self._ipt = self.netns_of(self.remote_cg("pod-ipt-client"))
                self.start_httpd(self.remote_cg("pod-ipt-server"), IPT_EP_IP, "ipt")
            else:
                self._ipt = self.node.add_netns("bench-ipt")
                self.start_httpd(self.remote_cg("pod-ipt-server"), IPT_EP_IP, "ipt", self._ipt)
        return self._ipt

    def iptables_restore(self, rules):
        """Replace the nat table of the ipt netns (iptables-restore, no --noflush)."""
        ns = self.ipt_netns()
        t0 = time.monotonic()
        r = subprocess.run(ns.prefix() + ["iptables-restore", "-w", "30"], input=rules,
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise BenchError("iptables-restore in %s: %s" % (ns.name, r.stderr.strip()[-2000:]))
        return time.monotonic() - t0

    def counters(self):
        try:
            return self.node.counters()
        except Exception as e:  # noqa: BLE001
            raise BenchError("cannot read counters: %s" % e)

    def close(self):
        if self.node is not None:
            (self.topo or self.node).close()
            if self.node.cleanup_problems:
                log("cleanup problems: %s" % self.node.cleanup_problems)
            self.node = None

    # -- tools

    def connloop(self, cg, ip, port, count, name, server_cg=None, netns=None):
        """Run the connect loop in a child of cg (in netns, if given); with server_cg, also
        the CPU time that cg and server_cg used, per connect (cpu_ns)."""
        argv = [os.path.join(self.tools, "connloop"), ip, str(port), str(count),
                str(self.args.max_loop_seconds)]
        cgs = [cg] + ([server_cg] if server_cg else [])
        u0 = sum(cpu_usec(c) for c in cgs)
        rc, out = self.run_in_cgroup(cg, argv, self.args.max_loop_seconds + 30, name, netns)
        u1 = sum(cpu_usec(c) for c in cgs)
        try:
            res = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError("connloop %s printed no result (rc %s): %r" % (name, rc, out))
        if rc != 0 or res.get("errors"):
            raise BenchError("connloop %s -> %s:%d failed: %s" % (name, ip, port, res))
        res["cpu_ns"] = (u1 - u0) * 1000.0 / max(1, res["count"])
        return res

    def wrk(self, url, close, duration, name, client_cg=None, cpu_cgs=None, netns=None, env=None):
        """wrk in a child of client_cg (default: the managed client pod), in netns if given;
        cpu_us per request is the CPU time of cpu_cgs (default: client and server pods)."""
        lua = os.path.join(self.node.tmp, "report.lua")
        if not os.path.exists(lua):
            with open(lua, "w") as f:
                f.write(WRK_LUA)
        argv = ["wrk", "-t", str(self.args.threads), "-c", str(self.args.connections),
                "-d", "%ds" % duration, "--timeout", "2s", "-s", lua,
                "-H", "%s: %s" % (ENV_HEADER[0], env or ENV_HEADER[1])]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(url)
        client_cg = client_cg or self.client_cg()
        cgs = cpu_cgs or [client_cg, self.server_cg()]
        u0 = sum(cpu_usec(c) for c in cgs)
        rc, out = self.run_in_cgroup(client_cg, argv, duration + 30, name, netns)
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
            if mode == "header" and delta.get("thread_adopt", 0) < res["ka"]["requests"] // 2:
                raise BenchError("header programs on, but thread_adopt grew by %d for %d "
                                 "requests: the thread context is not measured" %
                                 (delta.get("thread_adopt", 0), res["ka"]["requests"]))
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


# --------------------------------------------------------------------------- item 2: hops

# what every nginx of the benchmarks starts with (its files in the run's temp dir)
NGINX_HEAD = """worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
"""

NGINX_CONF = NGINX_HEAD + """  # route on the environment header, as a sidecar or node proxy would
  map $http_x_virtual_env $env_upstream {{
    default     env_dev;
    dev.proj1   env_proj1;
  }}
  upstream env_dev   {{ server {dev}:{port}; keepalive 64; }}
  upstream env_proj1 {{ server {proj1}:{port}; keepalive 64; }}
  server {{
    listen {ip}:{lport} reuseport backlog=4096;
    location / {{
      proxy_pass http://$env_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def kube_proxy_rules(services, measured_at=None):
    """iptables-restore input for the nat table, shaped like kube-proxy's iptables mode:
    OUTPUT/PREROUTING -> KUBE-SERVICES -> one rule per service port (dst ip, proto, dport)
    -> KUBE-SVC-<hash> -> (statistic random over endpoints) KUBE-SEP-<hash> -> MARK-MASQ for
    hairpin, DNAT. services: [(name, vip, port, [(ep_ip, ep_port)...])]; the list order is
    the KUBE-SERVICES order (a new connection's first packet walks it linearly)."""
    chains = ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODEPORTS"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully"]
    svc_rules, chain_rules = [], []
    for i, (name, vip, port, eps) in enumerate(services):
        h = "%016X" % (i + 1)
        svc = "KUBE-SVC-" + h
        chains.append(svc)
        svc_rules.append('-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment "%s:http '
                         'cluster IP" -m tcp --dport %d -j %s' % (vip, name, port, svc))
        for j, (ip, p) in enumerate(eps):
            sep = "KUBE-SEP-%s%02d" % (h[2:], j)
            chains.append(sep)
            left = len(eps) - j
            stat = ("-m statistic --mode random --probability %.11f " % (1.0 / left)
                    if left > 1 else "")
            chain_rules.append('-A %s -m comment --comment "%s:http -> %s:%d" %s-j %s'
                               % (svc, name, ip, p, stat, sep))
            chain_rules.append('-A %s -s %s/32 -m comment --comment "%s:http" -j KUBE-MARK-MASQ'
                               % (sep, ip, name))
            chain_rules.append('-A %s -p tcp -m comment --comment "%s:http" -m tcp -j DNAT '
                               "--to-destination %s:%d" % (sep, name, ip, p))
    svc_rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; '
                     'NOTE: this must be the last rule in this chain" -m addrtype --dst-type '
                     "LOCAL -j KUBE-NODEPORTS")
    head = ["*nat"] + [":%s ACCEPT [0:0]" % c for c in ("PREROUTING", "INPUT", "OUTPUT",
                                                          "POSTROUTING")]
    head += [":%s - [0:0]" % c for c in chains]
    return "\n".join(head + rules + svc_rules + chain_rules + ["COMMIT", ""])


def iptables_backend():
    r = subprocess.run(["iptables", "-V"], capture_output=True, text=True, timeout=10)
    return (r.stdout or r.stderr).strip()


def scale_addr(base, i):
    """The i-th address of a generated block: 127.<base + i/65536>.<i/256 % 256>.<i % 256>."""
    return "127.%d.%d.%d" % (base + (i >> 16), (i >> 8) & 255, i & 255)


def wait_listening(proc, ip, port, timeout, what, log):
    """Waits until the process started for a hop accepts on ip:port; its log in the error when
    it exits first."""
    def up():
        if proc.poll() is not None:
            return True
        try:
            socket.create_connection((ip, port), timeout=0.5).close()
            return True
        except OSError:
            return False
    harness.wait_until(up, timeout, what=what)
    if proc.poll() is not None:
        raise BenchError("%s exited: %s" % (what, harness._read_file(log, 2000)))


def run_nginx(b, name, conf_text, cg_name, ip, port):
    """nginx (Debian) with conf_text (its temp paths under the node's tmp/<name>) in the remote
    cgroup cg_name, waited for on ip:port; the cgroup."""
    tmp = os.path.join(b.node.tmp, name)
    for d in ("", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(conf_text.replace("{tmp}", tmp))
    cg = b.remote_cg(cg_name)
    proc = b.node._popen(["nginx", "-p", tmp, "-e", os.path.join(tmp, "nginx-error.log"),
                          "-c", conf], cg, name + ".log", b.netns_of(cg))

    wait_listening(proc, ip, port, 10, "%s on %s:%d" % (name, ip, port),
                   os.path.join(tmp, "nginx-error.log"))
    return cg


def start_nginx(b):
    """nginx (Debian) in an unmanaged cgroup on PROXY_IP:80, routing on X-Virtual-Env to the
    unmanaged servers: dev.proj1 -> PLAIN_IP, anything else -> PLAIN2_IP."""
    conf = NGINX_CONF.format(tmp="{tmp}", dev=PLAIN2_IP, proj1=PLAIN_IP, port=TARGET_PORT,
                             ip=PROXY_IP, lport=PROXY_PORT)
    return run_nginx(b, "nginx", conf, "pod-proxy", PROXY_IP, PROXY_PORT)


def suite_http(b):
    """Issue 5 item 2: the same tagged HTTP load over four paths: (a) direct to an unmanaged
    pod, (b) the service address with envsteer (header programs on), (c) a userspace
    header-routing proxy hop (nginx), (d) kube-proxy-shaped iptables DNAT (own netns)."""
    a = b.args
    b.set_agent_mode("header")
    plain2_cg = b.remote_cg("pod-plain-server2")
    b.start_httpd(plain2_cg, PLAIN2_IP, "plain2")
    proxy_cg = start_nginx(b)
    ns = b.ipt_netns()
    ipt_client_cg = b.remote_cg("pod-ipt-client")
    ipt_server_cg = b.remote_cg("pod-ipt-server")
    b.iptables_restore(kube_proxy_rules([("bench/web", SVC_IP, SVC_PORT,
                                          [(IPT_EP_IP, TARGET_PORT)])]))
    b.note("iptables: %s, in netns %s" % (iptables_backend(), ns.name))
    svc_url = "http://%s:%d/" % (SVC_IP, SVC_PORT)
    paths = {
        "a": dict(url="http://%s:%d/" % (PLAIN_IP, TARGET_PORT), client_cg=b.plain_client_cg,
                  cpu_cgs=[b.plain_client_cg, b.plain_server_cg], netns=None),
        "b": dict(url=svc_url, client_cg=b.client_cg(), cpu_cgs=[b.client_cg(), b.server_cg()],
                  netns=None),
        "c": dict(url="http://%s:%d/" % (PROXY_IP, PROXY_PORT), client_cg=b.plain_client_cg,
                  cpu_cgs=[b.plain_client_cg, b.plain_server_cg, proxy_cg], netns=None),
        "d": dict(url=svc_url, client_cg=ipt_client_cg, cpu_cgs=[ipt_client_cg, ipt_server_cg],
                  netns=ns),
    }
    names = {"a": "(a) direct to the pod, no programs",
             "b": "(b) service address, envsteer, header programs on",
             "c": "(c) nginx header-routing proxy hop",
             "d": "(d) iptables DNAT, kube-proxy shape"}
    vs = {"a": "direct", "c": "proxy", "d": "iptables"}
    modes = [("ka", False, "keep-alive"), ("close", True, "one connection per request")]
    targets = {("a", "ka", "rps"): (">=", 0.95), ("a", "close", "rps"): (">=", 0.93),
               ("c", "ka", "rps"): (">=", 2.0), ("c", "close", "rps"): (">=", 2.0),
               ("c", "ka", "p99_us"): ("<=", 0.5), ("c", "close", "p99_us"): ("<=", 0.5)}
    rows = {}
    for m, _, label in modes:
        for q, unit, better, what in (
                ("rps", "req/s", "higher", "RPS"), ("p50_us", "us", "lower", "latency p50"),
                ("p99_us", "us", "lower", "latency p99"),
                ("cpu_us", "us", "lower", "CPU time of the path's cgroups per request")):
            for other in ("a", "c", "d"):
                k = "hop_%s_%s_vs_%s" % (m, q, vs[other])
                rows[k] = Row(k, "HTTP %s, %s" % (label, what), unit, names["b"], names[other],
                              better, targets.get((other, m, q)),
                              fmt="%.1f" if q == "cpu_us" else "%.0f")
    # warm-up (not counted; skipped by --smoke), and proof that each path works
    for v, p in ([] if a.smoke else paths.items()):
        b.wrk(p["url"], False, 1, "hop-warm-" + v, p["client_cg"], p["cpu_cgs"], p["netns"])
    raw = []
    for i in range(a.rounds):
        rec = {"round": i + 1}
        c0 = b.counters()
        for m, close, _ in modes:
            res = {}
            for v, p in paths.items():
                res[v] = b.wrk(p["url"], close, a.duration, "hop-%s-%s" % (m, v),
                               p["client_cg"], p["cpu_cgs"], p["netns"])
            for q in ("rps", "p50_us", "p99_us", "cpu_us"):
                for other in ("a", "c", "d"):
                    rows["hop_%s_%s_vs_%s" % (m, q, vs[other])].add(res["b"][q], res[other][q])
            rec[m] = res
            log("http round %d/%d %s: rps a %.0f b %.0f c %.0f d %.0f; p99 us a %d b %d c %d "
                "d %d" % (i + 1, a.rounds, m, res["a"]["rps"], res["b"]["rps"],
                          res["c"]["rps"], res["d"]["rps"], res["a"]["p99_us"],
                          res["b"]["p99_us"], res["c"]["p99_us"], res["d"]["p99_us"]))
        c1 = b.counters()
        found = c1.get("header_found", 0) - c0.get("header_found", 0)
        if found < rec["ka"]["b"]["requests"] // 2:
            raise BenchError("path (b): header_found grew by %d for %d requests"
                             % (found, rec["ka"]["b"]["requests"]))
        raw.append(rec)
    return list(rows.values()), raw


# --------------------------------------------------------------------------- item 3: scaling

def k8s_service(ns, name, ip, port=80, target_port=8080, selector=None):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns,
                         "uid": "svc-%s-%s" % (ns, name)},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                     "ports": [{"name": "http", "port": port, "protocol": "TCP",
                                "targetPort": target_port}],
                     "selector": selector or {"app": name}}}


def k8s_pod(ns, name, ip, labels, cgroup=None, node="other"):
    meta = {"name": name, "namespace": ns, "uid": "pod-%s-%s" % (ns, name),
            "labels": labels}
    if cgroup:
        meta["annotations"] = {harness.CGROUP_ANNOTATION: cgroup}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "app", "ports": [
                {"containerPort": 8080, "name": "http", "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def write_json_manifest(node, filename, objs):
    """A kind: List JSON manifest, written atomically (staging file + rename)."""
    text = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs},
                      separators=(",", ":"))
    node._atomic_write(filename, text)
    return len(text)


def wait_sync(node, since_ok, pred, timeout, what, poll=0.002):
    """Poll /v1/status (every `poll` s, 2 ms) until a sync after since_ok succeeded and
    pred(status) holds."""
    def probe():
        try:
            st = node.status_http()
        except (OSError, ValueError, harness.HarnessError):
            return None
        if st["sync"]["ok"] > since_ok and pred(st):
            return st
        if st["sync"]["failed"] and st["sync"]["last_error"]:
            raise BenchError("%s: agent reports %s" % (what, st["sync"]["last_error"]))
        return None
    return harness.wait_until(probe, timeout, poll, what)


def suite_scale(b):
    """Issue 5 item 3: connect() cost with N services loaded, envsteer maps (loaded by the
    agent from generated manifests) versus N kube-proxy-style iptables services."""
    a = b.args
    b.set_agent_mode("header")
    ns = b.ipt_netns()
    ipt_client_cg = b.remote_cg("pod-ipt-client")
    b.note("iptables: %s, in netns %s" % (iptables_backend(), ns.name))
    rows, raw, curve = [], [], {"envsteer": {}, "iptables": {}}
    base_fe = b.node.status_http()["model"]["frontends"]
    cp = []
    try:
        for n in a.scale_sizes:
            extra = n - 1  # plus the bench service itself
            objs = []
            for i in range(extra):
                name = "svc-%d" % i
                objs.append(k8s_service("scale", name, scale_addr(100, i),
                                        selector={"app": name}))
                objs.append(k8s_pod("scale", "pod-%d" % i, scale_addr(110, i),
                                    {"app": name}))
            ok0 = b.node.status_http()["sync"]["ok"]
            t0 = time.monotonic()
            size = write_json_manifest(b.node, "scale.json", objs)
            wait_sync(b.node, ok0, lambda st: st["model"]["frontends"] == base_fe + extra, 900,
                      "agent applying %d services" % n)
            t_env = time.monotonic() - t0
            # the measured service sits in the middle of KUBE-SERVICES (a random service's
            # expected position); the others are the same shape with one endpoint each
            svcs = [("scale/svc-%d" % i, scale_addr(100, i), 80,
                     [(scale_addr(110, i), 8080)]) for i in range(extra)]
            svcs.insert(extra // 2, ("bench/web", SVC_IP, SVC_PORT, [(IPT_EP_IP, TARGET_PORT)]))
            t_ipt = b.iptables_restore(kube_proxy_rules(svcs))
            del svcs, objs
            log("scale %d services: envsteer applied in %.1fs (%d bytes of JSON), "
                "iptables-restore %.1fs" % (n, t_env, size, t_ipt))
            ra = Row("scale_%d_connect_ns" % n, "connect+close p50 with %d services" % n, "ns",
                     "envsteer: pod -> service", "iptables DNAT: pod -> service", "lower")
            rec = {"services": n, "envsteer_apply_s": t_env, "iptables_restore_s": t_ipt,
                   "rounds": []}
            count = max(200, a.connects // 2)
            b.connloop(b.client_cg(), SVC_IP, SVC_PORT, 200, "scale-warm-e")
            b.connloop(ipt_client_cg, SVC_IP, SVC_PORT, 200, "scale-warm-i", netns=ns)
            for i in range(a.rounds):
                re_ = b.connloop(b.client_cg(), SVC_IP, SVC_PORT, count, "scale-e")
                ri = b.connloop(ipt_client_cg, SVC_IP, SVC_PORT, count, "scale-i", netns=ns)
                ra.add(re_["p50_ns"], ri["p50_ns"])
                rec["rounds"].append({"envsteer": re_, "iptables": ri})
            curve["envsteer"][n] = list(ra.a)
            curve["iptables"][n] = list(ra.b)
            log("scale %d: envsteer p50 %.0f ns, iptables %.0f ns" % (
                n, statistics.median(ra.a), statistics.median(ra.b)))
            rows.append(ra)
            raw.append(rec)
            cp.append((n, t_env, t_ipt, size))
    finally:
        b.node.remove_raw_manifest("scale.json")
        try:
            if b.node.agent_running():
                wait_sync(b.node, b.node.status_http()["sync"]["ok"] - 1,
                          lambda st: st["model"]["frontends"] == base_fe, 300,
                          "agent dropping the scale services")
        except (TimeoutError, BenchError) as e:
            b.notes.append("scale clean-up: %s" % e)
        # the iptables rules go with the netns (deleted by close()); flushing 100 000
        # services with iptables-restore would take tens of seconds
    first = a.scale_sizes[0]
    for who, label in (("envsteer", "envsteer"), ("iptables", "iptables DNAT")):
        for n in a.scale_sizes[1:]:
            r = Row("scale_%s_%d_vs_%d" % (who, n, first), "connect+close p50, %d services "
                    "over %d" % (n, first), "ns", "%s, %d services" % (label, n),
                    "%s, %d services" % (label, first), "lower",
                    ("<=", 1.10) if who == "envsteer" and n == a.scale_sizes[-1] else None)
            for x in curve[who][n]:
                r.add(a=x)
            for x in curve[who][first]:
                r.add(b=x)
            rows.append(r)
    lines = ["| services | envsteer: agent apply from manifests, s | manifest JSON, MB | "
             "iptables-restore (nat table), s |", "|---|---|---|---|"]
    for n, te, ti, size in cp:
        lines.append("| %d | %.2f | %.1f | %.2f |" % (n, te, size / 1e6, ti))
    b.extra_tables.append(("Scaling: time to load the services (one run each)",
                           "\n".join(lines)))
    return rows, raw


# --------------------------------------------------------------------------- item 4: control plane

def proc_status_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError("no %s in /proc/%d/status" % (field, pid))


def pinned_map_memory(pin_dir):
    """{map name: bytes_memlock} of the maps pinned under pin_dir/maps (bpftool map show)."""
    out = {}
    mdir = os.path.join(pin_dir, "maps")
    for f in sorted(os.listdir(mdir)):
        r = subprocess.run(["bpftool", "-j", "map", "show", "pinned", os.path.join(mdir, f)],
                           capture_output=True, text=True, timeout=10)
        try:
            out[f] = int(json.loads(r.stdout).get("bytes_memlock", 0))
        except (ValueError, TypeError):
            pass
    return out


def log_apply_us(text, why):
    """The "in N us" of the agent's last "applied <why>" log line."""
    ms = re.findall(r"applied %s \((?:changed|no change)\).* in (\d+) us" % re.escape(why), text)
    return int(ms[-1]) if ms else None


class Metric:
    """A row of a non-A/B table: one quantity, its values over repetitions, a target."""

    def __init__(self, key, what, unit, target=None, fmt="%.1f"):
        self.key, self.what, self.unit, self.target, self.fmt = key, what, unit, target, fmt
        self.values = []

    def value(self):
        return statistics.median(self.values) if self.values else None

    def met(self):
        v = self.value()
        if self.target is None or v is None:
            return "-"
        op, t = self.target
        return "yes" if (v <= t if op == "<=" else v >= t) else "NO"

    def cell(self):
        if not self.values:
            return "n/a"
        return "%s [%s-%s]" % (self.fmt % self.value(), self.fmt % min(self.values),
                               self.fmt % max(self.values))

    def as_dict(self):
        return {"key": self.key, "what": self.what, "unit": self.unit, "values": self.values,
                "median": self.value(), "target": self.target, "met": self.met()}


def render_metrics(ms):
    lines = ["| row | measurement | value: median [min-max] | n | target | met |",
             "|---|---|---|---|---|---|"]
    for m in ms:
        lines.append("| %s | %s (%s) | %s | %d | %s | %s |" % (
            m.key, m.what, m.unit, m.cell(), len(m.values),
            "-" if m.target is None else "%s %s" % m.target, m.met()))
    return "\n".join(lines)


def write_control_cluster(cpn, n_svc, per_svc, n_env, n_ns, n_local):
    """The control suite's cluster as manifests of node CPN: one JSON file per namespace;
    pod k of service i is in env dev.e<(i*per_svc+k) % n_env>; the first pod of the first
    N_LOCAL services is local (a cgroup under the node's root). Returns (files by namespace,
    pods, bytes written)."""
    files, pod_ix = {}, 0
    local_left = n_local
    for i in range(n_svc):
        nsn = "ns-%d" % (i % n_ns)
        name = "svc-%d" % i
        objs = files.setdefault(nsn, [])
        objs.append(k8s_service(nsn, name, scale_addr(130, i), selector={"app": name}))
        for k in range(per_svc):
            labels = {"app": name, "virtual-env": "dev.e%d" % (pod_ix % n_env)}
            cg = None
            if local_left and k == 0:  # some local pods (cgroups under the cp root)
                local_left -= 1
                rel = cpn.cgroup_rel + "/pod-%d" % i
                os.mkdir(os.path.join(cpn.cg_mount, rel))
                cg = rel
            objs.append(k8s_pod(nsn, "pod-%d-%d" % (i, k), scale_addr(140, pod_ix),
                                labels, cg, node=cpn.uid if cg else "other"))
            pod_ix += 1
    total = 0
    for nsn, objs in files.items():
        total += write_json_manifest(cpn, nsn + ".json", objs)
    cpn.write_raw_manifest("cluster.yaml", "")  # the harness's file: empty
    return files, pod_ix, total


def suite_control(b):
    """Issue 5 item 4: a second node whose agent starts on generated manifests (services,
    pods, environments; selector-based membership), then single pod-label changes."""
    a = b.args
    n_svc, n_pod, n_env, n_ns, n_local = a.cp_services, a.cp_pods, a.cp_envs, a.cp_namespaces, 64
    cpn = harness.Node("bench-cp", default_env="dev", bin=a.bin, log_level="info")
    metrics = {k: Metric(k, w, u, t, f) for k, w, u, t, f in (
        ("cp_full_sync_s", "full sync from manifests: agent start -> ready (programs loaded, "
         "manifests parsed, model built, maps written)", "s", ("<=", 2.0), "%.2f"),
        ("cp_apply_s", "full sync: model + map writes only (agent log)", "s", None, "%.2f"),
        ("cp_resync_s", "re-sync of the unchanged state (SIGHUP: every file read and compared "
         "with its text as last read, changed ones parsed)", "s",
         None, "%.2f"),
        ("cp_event_p50_ms", "pod label change -> maps written, p50 of the events", "ms",
         ("<=", 2.0), "%.1f"),
        ("cp_event_p99_ms", "pod label change -> maps written, p99 (the max for < 100 events)",
         "ms", ("<=", 10.0), "%.1f"),
        ("cp_event_apply_ms", "pod label change: model + map writes only (agent log), p50",
         "ms", None, "%.1f"),
        ("cp_rss_mib", "agent peak RSS (VmHWM)", "MiB", ("<=", 150.0), "%.1f"),
        ("cp_rss_ready_mib", "agent RSS when ready (VmRSS after the start-up sync)", "MiB", None,
         "%.1f"),
        ("cp_rss_resync_mib", "agent RSS after the SIGHUP re-sync", "MiB", None, "%.1f"),
        ("cp_rss_events_mib", "agent RSS after the pod label changes (steady state)", "MiB", None,
         "%.1f"),
        ("cp_map_mib", "kernel memory of the pinned maps (bpftool bytes_memlock)", "MiB",
         None, "%.1f"),
        ("cp_kube_sync_s", "Kubernetes API (fakeapi, churn cluster): agent start -> ready",
         "s", None, "%.2f"),
        ("cp_kube_rss_ready_mib", "Kubernetes API: agent RSS when ready (churn cluster)", "MiB",
         None, "%.1f"),
        ("cp_kube_event_p50_ms", "pod label change through the watch (fakeapi) -> maps written, "
         "p50, one at a time (includes the Python fake API server's delivery)", "ms", None,
         "%.1f"),
        ("cp_kube_event_p99_ms", "pod label change through the watch -> maps written, p99 (the "
         "max for < 100 events)", "ms", None, "%.1f"),
        ("cp_kube_event_agent_p50_ms", "pod label change through the watch: the agent's own "
         "share, event received -> maps written, p50 (agent status)", "ms", ("<=", 2.0), "%.2f"),
        ("cp_kube_event_agent_p99_ms", "pod label change through the watch: the agent's own "
         "share, p99", "ms", ("<=", 10.0), "%.2f"),
        ("cp_churn_rate", "sustained churn: pod label changes sent per second", "1/s",
         (">=", 190.0), "%.0f"),
        ("cp_churn_p50_ms", "sustained churn: event -> maps written, p50", "ms", None, "%.1f"),
        ("cp_churn_p99_ms", "sustained churn: event -> maps written, p99", "ms", ("<=", 50.0),
         "%.1f"),
        ("cp_churn_agent_p50_ms", "sustained churn: the agent's own share, watch event received "
         "-> maps written, p50 (agent status)", "ms", None, "%.2f"),
        ("cp_churn_agent_p99_ms", "sustained churn: the agent's own share, p99", "ms",
         ("<=", 10.0), "%.2f"),
        ("cp_churn_agent_lock_p99_ms", "sustained churn: the agent's own share: waiting for its "
         "lock (status polls, metrics), p99 (agent status, stage lock)", "ms", None, "%.2f"),
        ("cp_churn_apply_ms", "sustained churn: the agent's work per batch of events (model + "
         "map writes, agent log), p99", "ms", None, "%.2f"),
        ("cp_churn_backlog", "sustained churn: events not applied yet when the last one was "
         "sent (a growing backlog ends long; rate x 50 ms = 10)", "events", ("<=", 10.0), "%.0f"),
        ("cp_churn_cpu", "sustained churn: agent CPU (utime+stime over wall time)", "cores",
         ("<=", 0.5), "%.2f"),
        ("cp_kube_rss_mib", "Kubernetes API: agent peak RSS after the churn (VmHWM)", "MiB",
         None, "%.1f"))}
    raw = {"services": n_svc, "pods": n_pod, "envs": n_env, "namespaces": n_ns,
           "local_pods": n_local}
    try:
        with open(os.path.join(cpn.tmp, "limits.yaml"), "w") as f:
            f.write(LIMITS_YAML)
        per_svc = max(1, n_pod // n_svc)
        files, pod_ix, total = write_control_cluster(cpn, n_svc, per_svc, n_env, n_ns, n_local)
        raw["manifest_bytes"] = total
        log("control plane: %d services, %d pods, %d envs in %d files (%.0f MB); starting "
            "the agent" % (n_svc, pod_ix, n_env, len(files), total / 1e6))
        t0 = time.monotonic()
        cpn.start_agent(["--config", os.path.join(cpn.tmp, "limits.yaml")], timeout=600)
        metrics["cp_full_sync_s"].values.append(time.monotonic() - t0)
        set_agent_nice(b, cpn.agent.pid, raw)  # (the start-up ran at the bench's nice)
        st = cpn.status_http()
        raw["model"] = st["model"]
        want_envs = n_env + 1
        if st["model"]["frontends"] != n_svc or st["model"]["envs"] < want_envs:
            raise BenchError("control plane: model after start-up %s, expected %d frontends "
                             "and %d envs" % (st["model"], n_svc, want_envs))
        start_log = cpn.agent_log_text(200000)
        # where start-up time goes, as the agent logs it
        raw["startup_log"] = [l for l in start_log.splitlines() if re.search(
            r"start-up:|model of .* built|applied start-up|ready: steering|data path on cgroup", l)]
        for l in raw["startup_log"]:
            log("  agent: " + l)
        us = log_apply_us(start_log, "start-up")
        if us is not None:
            metrics["cp_apply_s"].values.append(us / 1e6)
        pid = cpn.agent.pid
        metrics["cp_rss_ready_mib"].values.append(proc_status_kib(pid, "VmRSS") / 1024.0)
        # full re-sync of the same state (SIGHUP)
        ok0 = st["sync"]["ok"]
        t0 = time.monotonic()
        cpn.sighup_agent()
        wait_sync(cpn, ok0, lambda s: True, 300, "SIGHUP re-sync")
        metrics["cp_resync_s"].values.append(time.monotonic() - t0)
        metrics["cp_rss_resync_mib"].values.append(proc_status_kib(pid, "VmRSS") / 1024.0)
        # single pod-label changes: pod k=1 of service i moves to another env
        lat, rng = [], list(range(a.cp_events))
        for e in rng:
            i = (e * 7919) % n_svc
            nsn = "ns-%d" % (i % n_ns)
            objs = files[nsn]
            pname = "pod-%d-%d" % (i, min(1, per_svc - 1))
            pod = next(o for o in objs if o["kind"] == "Pod" and o["metadata"]["name"] == pname)
            old = pod["metadata"]["labels"]["virtual-env"]
            pod["metadata"]["labels"]["virtual-env"] = "dev.e%d" % (
                (int(old.split(".e")[1]) + 1 + e) % n_env)
            st0 = cpn.status_http()
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs},
                              separators=(",", ":"))
            staged = os.path.join(cpn.staging_dir, nsn + ".json.tmp")
            with open(staged, "w") as f:
                f.write(text)
            t_write = time.time()
            os.rename(staged, os.path.join(cpn.manifest_dir, nsn + ".json"))
            st1 = wait_sync(cpn, st0["sync"]["ok"], lambda s: True, 120,
                            "pod label change %d" % e, poll=a.cp_poll_ms / 1000.0)
            if st1["sync"]["map_updates"] + st1["sync"]["map_deletes"] == \
                    st0["sync"]["map_updates"] + st0["sync"]["map_deletes"]:
                raise BenchError("pod label change %d: the agent wrote no map entry" % e)
            lat.append((st1["sync"]["last_ok_unix"] - t_write) * 1000.0)
            us = log_apply_us(cpn.agent_log_text(20000), "manifest change")
            if us is not None:
                metrics["cp_event_apply_ms"].values.append(us / 1000.0)
            time.sleep(0.1)
        lat.sort()
        raw["event_ms"] = lat
        metrics["cp_event_p50_ms"].values.append(statistics.median(lat))
        metrics["cp_event_p99_ms"].values.append(
            lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))])
        metrics["cp_rss_mib"].values.append(proc_status_kib(pid, "VmHWM") / 1024.0)
        raw["rss_now_mib"] = proc_status_kib(pid, "VmRSS") / 1024.0
        metrics["cp_rss_events_mib"].values.append(raw["rss_now_mib"])
        mem = pinned_map_memory(cpn.pin_dir)
        raw["map_bytes"] = mem
        metrics["cp_map_mib"].values.append(sum(mem.values()) / 2.0 ** 20)
        raw["agent_log_tail"] = cpn.agent_log_text(20000)[-6000:]
        log("control plane: start->ready %.2fs, event p50 %.1f ms p99 %.1f ms, VmHWM %.0f MiB, "
            "maps %.1f MiB" % (metrics["cp_full_sync_s"].values[0], metrics[
                "cp_event_p50_ms"].values[0], metrics["cp_event_p99_ms"].values[0],
                metrics["cp_rss_mib"].values[0], metrics["cp_map_mib"].values[0]))
    finally:
        cpn.close()
        if cpn.cleanup_problems:
            b.notes.append("control-plane node clean-up: %s" % cpn.cleanup_problems)
    if a.cp_churn_seconds > 0:
        control_churn(b, metrics, raw)
    ms = list(metrics.values())
    b.extra_tables.append(("Control plane (issue 5 item 4): %d services, %d pods, %d "
                           "environments, %d events" % (n_svc, n_pod, n_env, a.cp_events),
                           render_metrics(ms)))
    b.metrics += ms
    return [], raw


def proc_cpu_s(pid):
    """utime + stime of a process, seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


class KubeBenchNode(harness.Node):
    """A bench node whose agent follows a fake API server (tests/e2e/fakeapi.py)."""

    def __init__(self, name, kubeconfig, **kw):
        super().__init__(name, **kw)
        self.kubeconfig = kubeconfig

    def agent_cmd(self, extra_args=(), port=None):
        cmd = super().agent_cmd(extra_args, port)
        i = cmd.index("--manifests")
        return cmd[:i] + ["--kubernetes", "--kubeconfig", self.kubeconfig,
                          "--node-name", "bench-node"] + cmd[i + 2:]


def set_agent_nice(b, pid, raw):
    """Every thread of the agent at --cp-agent-nice (default 0, a node agent's priority) when the
    bench itself runs niced on a shared machine: the event latencies are then the agent's and
    not the scheduler's share between a niced agent and others' un-niced work. "keep": as
    started (the bench's own nice)."""
    raw["bench_nice"] = os.nice(0)
    if b.args.cp_agent_nice == "keep":
        raw["agent_nice"] = raw["bench_nice"]
        return
    n = int(b.args.cp_agent_nice)
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), n)
        except OSError as e:
            raise BenchError("--cp-agent-nice %d for thread %s of the agent: %s" % (n, tid, e))
    raw["agent_nice"] = n


def cpu_pressure_us():
    """/proc/pressure/cpu "some" total (us): time at least one task waited for a CPU."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some "):
                    return int(line.split("total=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return None


def log_gaps(text, gap_s=0.2):
    """Lines of an agent log that are not "applied" lines, and the pauses of more than
    gap_s between consecutive lines (what the agent did, or did not log, meanwhile)."""
    out, prev = [], None
    for line in text.splitlines():
        m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+) ", line)
        if not m:
            continue
        t = datetime.datetime.fromisoformat(m.group(1)).timestamp()
        if prev is not None and t - prev[0] > gap_s:
            out.append("pause %.3f s after: %s" % (t - prev[0], prev[1][:200]))
        if " applied " not in line:
            out.append(line[:300])
        prev = (t, line)
    return out[-200:]


def control_churn(b, metrics, raw):
    """Issue 18 item 4: the agent on the Kubernetes API (fakeapi), a cluster of
    --cp-churn-pods pods, then --cp-churn-rate pod label changes per second for
    --cp-churn-seconds. Event -> maps: the agent's status says the newest
    resourceVersion it applied and when (sync.last_ok_unix, taken after the map
    writes); a poller records both, and an event counts as applied at the first
    poll that shows its resourceVersion (never earlier than true, at most one
    poll interval late)."""
    import fakeapi  # tests/e2e
    import threading
    a = b.args
    n_pod, per_svc = a.cp_churn_pods, 10
    n_svc = max(1, n_pod // per_svc)
    n_env = max(2, a.cp_envs * n_pod // max(1, a.cp_pods))
    api = fakeapi.FakeAPI(managed_fields=False, bookmark_interval=5.0, history_limit=100000)
    node = None
    try:
        api.start()
        log("churn: loading %d services, %d pods, %d envs into the fake API server" % (
            n_svc, n_pod, n_env))
        for i in range(n_svc):
            ns = "ns-%d" % (i % 20)
            api.create(k8s_service(ns, "svc-%d" % i, scale_addr(150, i)))
            for k in range(per_svc):
                ix = i * per_svc + k
                pod = k8s_pod(ns, "pod-%d-%d" % (i, k), scale_addr(160, ix),
                              {"app": "svc-%d" % i, "virtual-env": "dev.e%d" % (ix % n_env)})
                pod["metadata"].pop("uid", None)
                api.create(pod)
            ep = [{"addresses": [scale_addr(160, i * per_svc + k)], "conditions": {"ready": True},
                   "targetRef": {"kind": "Pod", "namespace": ns, "name": "pod-%d-%d" % (i, k)}}
                  for k in range(per_svc)]
            api.create({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": "svc-%d-1" % i, "namespace": ns,
                                     "labels": {"kubernetes.io/service-name": "svc-%d" % i}},
                        "addressType": "IPv4", "endpoints": ep,
                        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
        node = KubeBenchNode("bench-ch", os.path.join(b.node.tmp, "churn-kubeconfig"),
                             default_env="dev", bin=a.bin, log_level="info")
        api.write_kubeconfig(node.kubeconfig)
        with open(os.path.join(node.tmp, "limits.yaml"), "w") as f:
            f.write(LIMITS_YAML)
        t0 = time.monotonic()
        node.start_agent(["--config", os.path.join(node.tmp, "limits.yaml")], timeout=600)
        metrics["cp_kube_sync_s"].values.append(time.monotonic() - t0)
        pid = node.agent.pid
        set_agent_nice(b, pid, raw)
        st = node.status_http()
        if st["model"]["frontends"] != n_svc:
            raise BenchError("churn: model after start-up %s, expected %d frontends" % (
                st["model"], n_svc))
        metrics["cp_kube_rss_ready_mib"].values.append(proc_status_kib(pid, "VmRSS") / 1024.0)
        # every change moves a pod to another env (a change to the label it has is no event)
        cur_env = {}

        def relabel(i, e):
            svc, k = i // per_svc, i % per_svc
            cur = cur_env.get(i, i % n_env)
            new = (cur + 1 + e % (n_env - 1)) % n_env
            cur_env[i] = new
            o = api.relabel("Pod", "ns-%d" % (svc % 20), "pod-%d-%d" % (svc, k),
                            {"virtual-env": "dev.e%d" % new})
            return int(o["metadata"]["resourceVersion"])

        # single pod label changes through the watch, one at a time
        single = []
        for e in range(a.cp_events):
            t = time.time()
            rv = relabel((e * 104729) % n_pod, e)
            deadline = time.monotonic() + 30
            while True:
                s = node.status_http()["sync"]
                if int(s["last_applied_resource_version"] or 0) >= rv:
                    single.append((s["last_ok_unix"] - t) * 1000.0)
                    break
                if time.monotonic() > deadline:
                    raise BenchError("churn: single event %d not applied in 30 s" % e)
                time.sleep(a.cp_poll_ms / 1000.0)
            time.sleep(0.05)
        single.sort()
        own = node.status_http()["sync"].get("event_latency", {})
        metrics["cp_kube_event_p50_ms"].values.append(statistics.median(single))
        metrics["cp_kube_event_p99_ms"].values.append(
            single[min(len(single) - 1, int(round(0.99 * (len(single) - 1))))])
        metrics["cp_kube_event_agent_p50_ms"].values.append(own.get("p50_ms", float("nan")))
        metrics["cp_kube_event_agent_p99_ms"].values.append(own.get("p99_ms", float("nan")))
        raw["kube_single_event_ms"] = single
        raw["kube_single_event_agent"] = own
        # the poller: (last_applied_resource_version, last_ok_unix) as often as it can
        seen, stop = [], threading.Event()

        def poll():
            while not stop.is_set():
                try:
                    s = node.status_http()["sync"]
                    seen.append((int(s["last_applied_resource_version"] or 0), s["last_ok_unix"]))
                except (harness.HarnessError, ValueError, KeyError, OSError):
                    pass
                time.sleep(a.cp_poll_ms / 1000.0)
        th = threading.Thread(target=poll, daemon=True)
        th.start()
        rate, dur = a.cp_churn_rate, a.cp_churn_seconds
        sent = []  # (rv, wall time just before the API server took it)
        cpu0, t_start, psi0 = proc_cpu_s(pid), time.monotonic(), cpu_pressure_us()
        n = int(rate * dur)
        for e in range(n):
            due = t_start + e / float(rate)
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            t = time.time()
            sent.append((relabel((e * 7919) % n_pod, e), t))
        t_sent = time.monotonic() - t_start
        cpu_s = proc_cpu_s(pid) - cpu0
        wall = time.monotonic() - t_start
        psi1 = cpu_pressure_us()
        cpu_pressure = (psi1 - psi0) / 1e6 / wall if psi0 is not None and psi1 is not None else None
        # drain: until the newest event is applied (bounded); a change to the label the pod
        # already has is no event (the API server keeps the old resourceVersion)
        newest = sent[-1][0]  # every change is a new resourceVersion
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not seen or max(x[0] for x in seen[-50:]) < newest):
            time.sleep(0.05)
        stop.set()
        th.join(5)
        lat, j = [], 0
        obs = sorted(seen)
        for rv, t in sent:
            while j < len(obs) and obs[j][0] < rv:
                j += 1
            if j == len(obs):
                break
            lat.append((obs[j][1] - t) * 1000.0)
        missing = len(sent) - len(lat)
        if missing:
            b.notes.append("churn: %d of %d events not seen applied within 60 s" % (missing, len(sent)))
        lat_sorted = sorted(lat)
        q = lambda v, p: v[min(len(v) - 1, int(round(p * (len(v) - 1))))] if v else float("nan")  # noqa: E731
        tenth = max(1, len(lat) // 10)
        first, last = sorted(lat[:tenth]), sorted(lat[-tenth:])
        metrics["cp_churn_rate"].values.append(len(sent) / t_sent)
        metrics["cp_churn_p50_ms"].values.append(q(lat_sorted, 0.5))
        metrics["cp_churn_p99_ms"].values.append(q(lat_sorted, 0.99))
        # backlog: events sent but not applied yet when the last one was sent (a queue that
        # grows ends long; one that keeps up holds about rate x latency)
        t_last = sent[-1][1]
        pending = missing + sum(1 for (rv, t), ms in zip(sent, lat) if t + ms / 1000.0 > t_last)
        metrics["cp_churn_backlog"].values.append(pending)
        # the agent's work per batch of events (model + map writes, its log): how much of
        # the latency is work and how much is waiting to run on a busy machine
        work = sorted(int(x) / 1000.0 for x in re.findall(
            r"applied kubernetes event \((?:changed|no change)\).* in (\d+) us",
            node.agent_log_text(50 * 2 ** 20)))
        metrics["cp_churn_apply_ms"].values.append(q(work, 0.99))
        agent_lat = node.status_http()["sync"].get("event_latency", {})
        metrics["cp_churn_agent_p50_ms"].values.append(agent_lat.get("p50_ms", float("nan")))
        metrics["cp_churn_agent_p99_ms"].values.append(agent_lat.get("p99_ms", float("nan")))
        metrics["cp_churn_agent_lock_p99_ms"].values.append(
            agent_lat.get("stages", {}).get("lock", {}).get("p99_ms", float("nan")))
        stages = agent_lat.get("stages", {})
        b.notes.append("churn: the agent's own share by stage, p50 / p99 / max ms: %s; agent nice %s "
                       "(the bench's %s); CPU pressure (some task waiting for a CPU) %s of the time" % (
                           ", ".join("%s %.2f / %.2f / %.1f" % (k, v["p50_ms"], v["p99_ms"], v["max_ms"])
                                     for k, v in stages.items()),
                           raw.get("agent_nice"), raw.get("bench_nice"),
                           "%.0f%%" % (100 * cpu_pressure) if cpu_pressure is not None else "?"))
        metrics["cp_churn_cpu"].values.append(cpu_s / wall)
        metrics["cp_kube_rss_mib"].values.append(proc_status_kib(pid, "VmHWM") / 1024.0)
        raw["churn"] = {"pods": n_pod, "services": n_svc, "envs": n_env, "events": len(sent),
                        "send_s": t_sent, "agent_cpu_s": cpu_s, "wall_s": wall,
                        "polls": len(seen), "not_applied": missing, "applies": len(work),
                        "cpu_pressure": cpu_pressure,
                        "apply_ms_percentiles": {p: q(work, p / 100.0) for p in (50, 90, 99, 100)}, "agent_event_latency": agent_lat,
                        "p50_first_tenth_ms": q(first, 0.5), "p50_last_tenth_ms": q(last, 0.5),
                        "event_ms_percentiles": {p: q(lat_sorted, p / 100.0)
                                                 for p in (50, 90, 99, 100)},
                        "agent_log_tail": node.agent_log_text(20000)[-3000:],
                        "agent_log_gaps": log_gaps(node.agent_log_text(50 * 2 ** 20))}
        log("churn: %d events in %.1f s, p50 %.1f ms p99 %.1f ms, agent CPU %.2f core" % (
            len(sent), t_sent, q(lat_sorted, 0.5), q(lat_sorted, 0.99), cpu_s / wall))
    finally:
        if node is not None:
            node.close()
            if node.cleanup_problems:
                b.notes.append("churn node clean-up: %s" % node.cleanup_problems)
        api.stop()


# Issue 14's targets for one connection per request (every request through the relay).
REROUTE_TARGETS = {"reroute_close_rps": (">=", 0.8), "reroute_close_p50_us": ("<=", 1.5),
                   "reroute_close_p99_us": ("<=", 3.0)}


def suite_reroute(b):
    """Issues 6 and 14: the cost of a request re-routed per request. The client pod is
    dev.proj1: without a hint its connections go to web-proj1 at connect(). A: requests tagged
    dev (they belong on web-dev); B: requests tagged dev.proj1 (out on their own connection).
    - keep-alive, on connections made to the pod's own set (its hint names it after B's
      warm-up): the first request of each connection takes the slow path through the agent, all
      later ones are redirected in the kernel;
    - one connection per request, agent defaults: the relay notes a connect hint (maps/abi.h
      es_hints) at the first (a warm-up run, not counted), and every later connection of the
      pod is made to web-dev at connect(), each request still checked by its own header;
    - one connection per request, agent --no-connect-hints: every request through the relay
      (the path a request takes when the hint is wrong: a client whose tags change).
    B runs first in a round, after a warm-up tagged dev.proj1 (the pod's hint then names its
    own set). Per round the agent restarts twice (pinned maps kept)."""
    a = b.args
    url = "http://%s:%d/" % (SVC_IP, SVC_PORT)
    if b.topo is not None:
        # Each 5 s close-mode run leaves ~14 000 of the client's connections to the pod in
        # TIME_WAIT; without reuse (tcp_tw_reuse 2: loopback only, in every new namespace) the
        # runs after the first measured connect()'s port search at ~200 rps, A and B alike, not
        # the relay. Reuse in the client pod's namespace, for both variants.
        topology._sysctl(b.cg_ns[b.client_cg()], "net.ipv4.tcp_tw_reuse=1")
    rows = {}
    for v, label in (("ka", "keep-alive (kernel path)"),
                     ("close", "one connection per request (hinted after the first)"),
                     ("relay", "one connection per request, --no-connect-hints (every request "
                               "through the relay)")):
        for q, unit, better in (("rps", "req/s", "higher"), ("p50_us", "us", "lower"),
                                ("p99_us", "us", "lower")):
            k = "reroute_%s_%s" % (v, q)
            rows[k] = Row(k, "HTTP %s, %s" % (label, q.replace("_us", "")), unit,
                          "re-routed (tagged dev)", "own connection (tagged dev.proj1)", better,
                          REROUTE_TARGETS.get(k), fmt="%.0f")
    raw = []

    def measured(name, env, close, check):
        c0 = b.counters()
        res = b.wrk(url, close, a.duration, name, env=env)
        c1 = b.counters()
        delta = {k: c1.get(k, 0) - c0.get(k, 0) for k in c1}
        why = check(res, delta)
        if why:
            raise BenchError("%s (tagged %s): %s; counters %s" % (name, env, why,
                             {k: x for k, x in delta.items() if x}))
        return res, {k: x for k, x in delta.items() if x}

    def moved(d):
        return d.get("req_rerouted_kernel", 0) + d.get("req_slow_path", 0)

    for i in range(a.rounds):
        rec = {}
        b.set_agent_mode("header")
        # B, then A's keep-alive on connections made to the pod's own set (the hint names it
        # after B's warm-up), then A one connection per request, hinted after its warm-up
        b.wrk(url, True, 1, "warm-hint-proj1", env="dev.proj1")
        none = lambda r, d: "%d re-routed, %d hinted" % (moved(d), d.get("connect_hinted", 0)) \
            if moved(d) or d.get("connect_hinted", 0) else None  # noqa: E731
        rec["ka dev.proj1"] = measured("reroute-ka-dev.proj1", "dev.proj1", False, none)
        rec["close dev.proj1"] = measured("reroute-close-dev.proj1", "dev.proj1", True, none)
        rec["ka dev"] = measured(
            "reroute-ka-dev", "dev", False,
            lambda r, d: ("only %d re-routed, %d hinted" % (moved(d), d.get("connect_hinted", 0))
                          if moved(d) < r["requests"] // 2 or d.get("connect_hinted", 0) else None))
        b.wrk(url, True, 1, "warm-hint-dev", env="dev")
        rec["close dev"] = measured(
            "reroute-close-dev", "dev", True,
            lambda r, d: ("only %d of %d connects hinted" % (d.get("connect_hinted", 0), r["requests"])
                          if d.get("connect_hinted", 0) < r["requests"] * 0.9 else None))
        b.set_agent_mode("nohints")
        rec["close dev, hints off"] = measured(
            "reroute-relay-dev", "dev", True,
            lambda r, d: ("%d hinted, %d of %d through the relay" % (
                d.get("connect_hinted", 0), d.get("req_slow_path", 0), r["requests"])
                if d.get("connect_hinted", 0) or d.get("req_slow_path", 0) < r["requests"] * 0.9
                else None))
        for v, key_a, key_b in (("ka", "ka dev", "ka dev.proj1"),
                                ("close", "close dev", "close dev.proj1"),
                                ("relay", "close dev, hints off", "close dev.proj1")):
            for q in ("rps", "p50_us", "p99_us"):
                rows["reroute_%s_%s" % (v, q)].add(a=rec[key_a][0][q], b=rec[key_b][0][q])
        raw.append({"round": i + 1, **{k: {"results": r, "counter_delta": d} for k, (r, d) in rec.items()}})
        log("reroute round %d/%d: keep-alive %.0f / %.0f rps, per-conn hinted %.0f, relay %.0f, own %.0f rps"
            % (i + 1, a.rounds, rec["ka dev"][0]["rps"], rec["ka dev.proj1"][0]["rps"],
               rec["close dev"][0]["rps"], rec["close dev, hints off"][0]["rps"],
               rec["close dev.proj1"][0]["rps"]))
    return list(rows.values()), raw


# --------------------------------------------------------------------------- issue 17's table

ISSUE17_TARGETS = {"i17_ka_rps_vs_direct": (">=", 0.95), "i17_ka_rps_vs_iptables": (">=", 1.0),
                   "i17_close_rps_vs_direct": (">=", 0.93),
                   "i17_connect_p50_vs_direct": ("<=", 1.05),
                   # "1.00: no program runs for them"; the machine's noise is a few percent
                   "i17_nonpart_ka_rps": (">=", 0.97), "i17_nonpart_close_rps": (">=", 0.97),
                   "i17_nonpart_connect_p50": ("<=", 1.03)}


def tcp_time_wait(netns):
    """TCP sockets in TIME_WAIT in netns (None: this script's namespace); -1 if ss failed."""
    argv = (netns.prefix() if netns is not None else []) + ["ss", "-Htan", "state", "time-wait"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return len(r.stdout.splitlines()) if r.returncode == 0 else -1


def np_cg(b, name):
    return b.node.pods["%s/%s" % (NS, name)].cgroup_dir


def suite_issue17(b):
    """Issue 17's table, every row measured side by side in each round with N services loaded
    (default 10 000; smoke 100): (b) envsteer, the managed client through the service address
    (header programs on) against (a) direct between unmanaged cgroups and (d) kube-proxy-shaped
    iptables DNAT; and pods of the steered subtree that take no part (np-client -> np-server,
    the agent running) against (a)."""
    a = b.args
    b.set_agent_mode("header")
    for name in ("np-client", "np-server"):
        progs = b.effective_programs(np_cg(b, name))
        b.attached["%s cgroup, takes no part (effective)" % name] = progs
        if progs:
            raise BenchError("%s takes no part but has programs: %s" % (name, progs))
    ns = b.ipt_netns()
    ipt_client_cg, ipt_server_cg = b.remote_cg("pod-ipt-client"), b.remote_cg("pod-ipt-server")
    n = a.issue17_services
    extra = n - 1
    objs = []
    for i in range(extra):
        name = "svc-%d" % i
        objs.append(k8s_service("scale", name, scale_addr(100, i), selector={"app": name}))
        objs.append(k8s_pod("scale", "pod-%d" % i, scale_addr(110, i), {"app": name}))
    base_fe = b.node.status_http()["model"]["frontends"]
    ok0 = b.node.status_http()["sync"]["ok"]
    write_json_manifest(b.node, "scale.json", objs)
    wait_sync(b.node, ok0, lambda st: st["model"]["frontends"] == base_fe + extra, 900,
              "agent applying %d services" % n)
    svcs = [("scale/svc-%d" % i, scale_addr(100, i), 80, [(scale_addr(110, i), 8080)])
            for i in range(extra)]
    svcs.insert(extra // 2, ("bench/web", SVC_IP, SVC_PORT, [(IPT_EP_IP, TARGET_PORT)]))
    b.iptables_restore(kube_proxy_rules(svcs))
    del svcs, objs
    b.note("issue 17 suite: %d services loaded (envsteer maps and the iptables netns)" % n)
    env_name = "(b) envsteer: managed pod -> service address, header programs on"
    direct = "(a) no envsteer: unmanaged cgroups, pod IP"
    ipt = "(d) iptables DNAT, kube-proxy shape (own netns)"
    nonpart = "pods that take no part (steered subtree, agent running), pod IP"
    rows = {
        "i17_ka_rps_vs_direct": Row("i17_ka_rps_vs_direct", "HTTP keep-alive, RPS", "req/s",
                                    env_name, direct, "higher"),
        "i17_ka_rps_vs_iptables": Row("i17_ka_rps_vs_iptables", "HTTP keep-alive, RPS", "req/s",
                                      env_name, ipt, "higher"),
        "i17_close_rps_vs_direct": Row("i17_close_rps_vs_direct",
                                       "HTTP one connection per request, RPS", "req/s", env_name,
                                       direct, "higher"),
        "i17_connect_p50_vs_direct": Row("i17_connect_p50_vs_direct",
                                         "connect+close p50, %d services loaded" % n, "ns",
                                         env_name, direct, "lower"),
        "i17_nonpart_ka_rps": Row("i17_nonpart_ka_rps", "HTTP keep-alive, RPS", "req/s", nonpart,
                                  direct, "higher"),
        "i17_nonpart_close_rps": Row("i17_nonpart_close_rps",
                                     "HTTP one connection per request, RPS", "req/s", nonpart,
                                     direct, "higher"),
        "i17_nonpart_connect_p50": Row("i17_nonpart_connect_p50", "connect+close p50", "ns",
                                       nonpart, direct, "lower"),
    }
    for k_, r in rows.items():
        r.target = ISSUE17_TARGETS[k_]
    svc_url = "http://%s:%d/" % (SVC_IP, SVC_PORT)
    paths = {
        "a": dict(url="http://%s:%d/" % (PLAIN_IP, TARGET_PORT), client_cg=b.plain_client_cg,
                  cpu_cgs=[b.plain_client_cg, b.plain_server_cg], netns=None),
        "b": dict(url=svc_url, client_cg=b.client_cg(), cpu_cgs=[b.client_cg(), b.server_cg()],
                  netns=None),
        "d": dict(url=svc_url, client_cg=ipt_client_cg, cpu_cgs=[ipt_client_cg, ipt_server_cg],
                  netns=ns),
        "n": dict(url="http://%s:%d/" % (NP_SERVER_IP, TARGET_PORT),
                  client_cg=np_cg(b, "np-client"),
                  cpu_cgs=[np_cg(b, "np-client"), np_cg(b, "np-server")], netns=None),
    }
    count = max(200, a.connects // 2)
    # One connection per request over the veths: ~30 000 connections per 5 s run. The client
    # end of a connection the client closes first stays in TIME_WAIT for 60 s, and without
    # reuse (tcp_tw_reuse 2 is loopback only, the default of every new namespace) connect()'s
    # port search goes through them in every later run (the reroute suite's finding). Reuse
    # in every compared client's namespace, so that no variant pays for an earlier one's.
    client_ns = {v: p["netns"] or b.netns_of(p["client_cg"]) for v, p in paths.items()}
    server_ns = {"a": b.netns_of(b.plain_server_cg), "b": b.netns_of(b.server_cg()),
                 "n": b.netns_of(np_cg(b, "np-server"))}
    for v, cns in client_ns.items():
        if cns is not None and a.issue17_tw_reuse:
            topology._sysctl(cns, "net.ipv4.tcp_tw_reuse=1")
    raw = []
    try:
        for v, p in ([] if a.smoke else paths.items()):
            b.wrk(p["url"], False, 1, "i17-warm-" + v, p["client_cg"], p["cpu_cgs"], p["netns"])
        for i in range(a.rounds):
            rec = {"round": i + 1}
            c0 = b.counters()
            # the variants' order turns every round, so that no variant always runs
            # right after another (e.g. in the TIME_WAIT sockets of the one before)
            order = list(paths)[i % len(paths):] + list(paths)[:i % len(paths)]
            loops = {"b": (b.client_cg(), SVC_IP, SVC_PORT),
                     "a": (b.plain_client_cg, PLAIN_IP, TARGET_PORT),
                     "n": (np_cg(b, "np-client"), NP_SERVER_IP, TARGET_PORT)}
            rec["connect"] = {v: b.connloop(*loops[v], count, "i17-connect-" + v)
                              for v in order if v in loops}
            for m, close in (("ka", False), ("close", True)):
                rec[m] = {}
                for v in order:
                    p = paths[v]
                    if close and v == "d":
                        continue
                    rec[m][v] = b.wrk(p["url"], close, a.duration, "i17-%s-%s" % (m, v),
                                      p["client_cg"], p["cpu_cgs"], p["netns"])
                    if close:
                        # what a run leaves behind for the next one
                        rec[m][v]["time_wait"] = {"client": tcp_time_wait(client_ns[v]),
                                                  "server": tcp_time_wait(server_ns[v])}
            c1 = b.counters()
            steered = c1.get("steered_own_env", 0) - c0.get("steered_own_env", 0)
            if steered < count:
                raise BenchError("issue 17 suite: only %d connects steered" % steered)
            cn, ka, cl = rec["connect"], rec["ka"], rec["close"]
            rows["i17_ka_rps_vs_direct"].add(ka["b"]["rps"], ka["a"]["rps"])
            rows["i17_ka_rps_vs_iptables"].add(ka["b"]["rps"], ka["d"]["rps"])
            rows["i17_close_rps_vs_direct"].add(cl["b"]["rps"], cl["a"]["rps"])
            rows["i17_connect_p50_vs_direct"].add(cn["b"]["p50_ns"], cn["a"]["p50_ns"])
            rows["i17_nonpart_ka_rps"].add(ka["n"]["rps"], ka["a"]["rps"])
            rows["i17_nonpart_close_rps"].add(cl["n"]["rps"], cl["a"]["rps"])
            rows["i17_nonpart_connect_p50"].add(cn["n"]["p50_ns"], cn["a"]["p50_ns"])
            raw.append(rec)
            log("issue17 round %d/%d: ka rps a %.0f b %.0f d %.0f n %.0f; close rps a %.0f "
                "b %.0f n %.0f; connect p50 ns a %d b %d n %d" % (
                    i + 1, a.rounds, ka["a"]["rps"], ka["b"]["rps"], ka["d"]["rps"],
                    ka["n"]["rps"], cl["a"]["rps"], cl["b"]["rps"], cl["n"]["rps"],
                    cn["a"]["p50_ns"], cn["b"]["p50_ns"], cn["n"]["p50_ns"]))
            log("issue17 round %d/%d: per-connection runs: connections, TIME_WAIT after the run "
                "(client/server): %s" % (i + 1, a.rounds, ", ".join(
                    "%s %d %s/%s" % (v, cl[v]["requests"], cl[v]["time_wait"]["client"],
                                     cl[v]["time_wait"]["server"]) for v in cl)))
    finally:
        b.node.remove_raw_manifest("scale.json")
        try:
            if b.node.agent_running():
                wait_sync(b.node, b.node.status_http()["sync"]["ok"] - 1,
                          lambda st: st["model"]["frontends"] == base_fe, 300,
                          "agent dropping the issue 17 services")
        except (TimeoutError, BenchError) as e:
            b.notes.append("issue 17 clean-up: %s" % e)
    return list(rows.values()), raw


# --------------------------------------------------------------------------- HTTP/2, gRPC

GRPC_VIP, GRPC_PORT = "127.96.240.2", 50051   # service "grpc", port named grpc (declared)
GRPC_DEV_IP = "127.1.240.40"      # grpc-dev   (dev)
GRPC_P1_IP = "127.1.240.41"       # grpc-proj1 (dev.proj1): where the tagged calls land
GRPC_PLAIN_IP = "127.1.240.42"    # the same server unmanaged: direct, and nginx's dev.proj1
GRPC_PLAIN2_IP = "127.1.240.43"   # a second unmanaged server: nginx's "dev" upstream
GRPC_PROXY_IP = "127.1.240.44"    # nginx grpc_pass, routing on x-virtual-env (unmanaged)
GRPCSERVER = os.path.join(REPO, "tests", "e2e", "grpcserver.py")

NGINX_GRPC_CONF = NGINX_HEAD + """  map $http_x_virtual_env $grpc_upstream {{
    default     grpc_dev;
    dev.proj1   grpc_proj1;
  }}
  upstream grpc_dev   {{ server {dev}:{port}; keepalive 64; }}
  upstream grpc_proj1 {{ server {proj1}:{port}; keepalive 64; }}
  server {{
    listen {ip}:{port} http2 reuseport backlog=4096;
    http2_max_concurrent_streams 1024;
    # nginx ends an HTTP/2 connection after 1000 requests (GOAWAY) by default, and h2load
    # does not reconnect: a long run would measure idle clients
    keepalive_requests 100000000;
    location / {{
      grpc_pass grpc://$grpc_upstream;
    }}
  }}
}}
"""


def grpc_frame(payload):
    """One gRPC message: uncompressed flag, 4-byte big-endian length, payload."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def start_grpc_server(b, cg, ip, name):
    py = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    proc = b.node._popen([py, GRPCSERVER, ip, str(GRPC_PORT), name], cg, "grpc-%s.log" % name,
                         b.netns_of(cg))

    wait_listening(proc, ip, GRPC_PORT, 20, "grpc server %s" % name,
                   os.path.join(b.node.log_dir, "grpc-%s.log" % name))
    return proc


def start_nginx_grpc(b):
    conf = NGINX_GRPC_CONF.format(tmp="{tmp}", dev=GRPC_PLAIN2_IP, proj1=GRPC_PLAIN_IP,
                                  port=GRPC_PORT, ip=GRPC_PROXY_IP)
    return run_nginx(b, "nginx-grpc", conf, "pod-grpc-proxy", GRPC_PROXY_IP, GRPC_PORT)


def h2load(b, url, body_file, duration, name, client_cg, cpu_cgs, agent_pid=None):
    """h2load with gRPC calls (POST, application/grpc, the env header) in a child of
    client_cg: calls/s, p50/p99 from its per-request log, CPU per call of cpu_cgs (and of
    the agent's process, for the path through its endpoint). Every call must be answered 200
    with the pod's grpc-status in the trailers (h2load checks the :status only; the smoke
    check of each path below checks the pod)."""
    b._n += 1
    logf = os.path.join(b.node.tmp, "h2load-%s-%d.log" % (name, b._n))
    argv = ["h2load", "-c", str(b.args.h2_clients), "-m", str(b.args.h2_streams),
            "-D", str(duration), "--warm-up-time", "1", "-d", body_file,
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-H", "%s: %s" % (ENV_HEADER[0].lower(), ENV_HEADER[1]), "--log-file", logf, url]
    u0 = sum(cpu_usec(c) for c in cpu_cgs)
    a0 = proc_cpu_s(agent_pid) if agent_pid else 0.0
    rc, out = b.run_in_cgroup(client_cg, argv, duration + 60, name)
    u1 = sum(cpu_usec(c) for c in cpu_cgs)
    a1 = proc_cpu_s(agent_pid) if agent_pid else 0.0
    lat, bad = [], 0
    with open(logf) as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) < 3:
                continue
            if int(cols[1]) < 100:
                continue  # cut off by the end of the run (h2load stops its clients)
            if cols[1] != "200":
                bad += 1
            lat.append(int(cols[2]))
    os.unlink(logf)
    if rc != 0 or not lat:
        raise BenchError("h2load %s failed (rc %s):\n%s" % (name, rc, out))
    if bad > len(lat) * 0.001:
        raise BenchError("h2load %s: %d of %d calls not answered 200:\n%s" % (name, bad, len(lat), out))
    lat.sort()
    n = len(lat)
    m = re.search(r"finished in [0-9.]+\w*, ([0-9.]+) req/s", out or "")
    if not m:
        raise BenchError("h2load %s: no req/s in its output:\n%s" % (name, out))
    return {"calls": n, "rps": float(m.group(1)), "p50_us": lat[n // 2],
            "p99_us": lat[min(n - 1, (n * 99) // 100)],
            "cpu_us": ((u1 - u0) + (a1 - a0) * 1e6) / n, "agent_cpu_us": (a1 - a0) * 1e6 / n}


def grpc_check(b, cg, to, name):
    """One Echo call per path through grpcclient.py: the answer names the dev.proj1 pod."""
    py = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    rc, out = b.run_in_cgroup(cg, [py, os.path.join(REPO, "tests", "e2e", "grpcclient.py"), "--to", to,
                                   "mix", "--envs=dev.proj1", "--calls", "2"], 60, "check-" + name)
    try:
        ans = json.loads(out.strip().splitlines()[-1])["answers"]
    except (ValueError, IndexError, KeyError):
        raise BenchError("gRPC check %s: no answer (rc %s): %r" % (name, rc, out))
    if rc != 0 or not ans or any("error" in a or "proj1" not in a.get("pod", "") for a in ans):
        raise BenchError("gRPC check %s: %s" % (name, ans))


def suite_h2(b):
    """Issue 16: gRPC through the agent's HTTP/2 endpoint (every stream routed by its env
    header) vs direct to the pod vs nginx grpc_pass routing on the same header. h2load, the
    same tagged calls: unary Echo (a 64-byte message) and server streaming Down (one call,
    20 messages of 256 bytes). Servers: tests/e2e/grpcserver.py (python3-grpcio) in each
    variant, so the server's cost is the same everywhere."""
    a = b.args
    n = b.node
    if NS + "/grpc-dev" not in n.pods:
        svc = dict(port=GRPC_PORT, target_port=GRPC_PORT, protocols=(),
                   extra_ports=[{"name": "grpc", "port": GRPC_PORT, "target_port": GRPC_PORT,
                                 "protocol": "TCP"}])
        if b.topo is None:
            n.add_service(NS, "grpc", GRPC_VIP, **svc)
        else:
            b.topo.add_service(NS, "grpc", 2, **svc)
        ips = {"GRPC_DEV_IP": b.managed_pod("grpc-dev", GRPC_DEV_IP, env="dev", app="grpc",
                                            port=GRPC_PORT),
               "GRPC_P1_IP": b.managed_pod("grpc-proj1", GRPC_P1_IP, env="dev.proj1", app="grpc",
                                           port=GRPC_PORT)}
        globals().update(ips)
        n.write_manifests()
        for pod, ip in (("grpc-dev", GRPC_DEV_IP), ("grpc-proj1", GRPC_P1_IP)):
            start_grpc_server(b, n.pods["%s/%s" % (NS, pod)].cgroup_dir, ip, "bench-" + pod)
        plain_cg = b.remote_cg("pod-grpc-plain")
        start_grpc_server(b, plain_cg, GRPC_PLAIN_IP, "bench-grpc-plain-proj1")
        start_grpc_server(b, b.remote_cg("pod-grpc-plain2"), GRPC_PLAIN2_IP, "bench-grpc-plain-dev")
        proxy_cg = start_nginx_grpc(b)
    plain_cg = b.remote_cg("pod-grpc-plain")
    proxy_cg = b.remote_cg("pod-grpc-proxy")
    b.set_agent_mode("h2")
    server_cg = n.pods[NS + "/grpc-proj1"].cgroup_dir
    bodies = {}
    for kind, path, payload in (("unary", "Echo", b"x" * 64),
                                ("stream", "Down", json.dumps({"n": 20, "size": 256}).encode())):
        f = os.path.join(n.tmp, "grpc-%s.bin" % kind)
        with open(f, "wb") as fh:
            fh.write(grpc_frame(payload))
        bodies[kind] = (f, path)
    paths = {
        "b": dict(ip=GRPC_VIP, client_cg=b.client_cg(), cpu_cgs=[b.client_cg(), server_cg], agent=True),
        "a": dict(ip=GRPC_PLAIN_IP, client_cg=b.plain_client_cg, cpu_cgs=[b.plain_client_cg, plain_cg],
                  agent=False),
        "c": dict(ip=GRPC_PROXY_IP, client_cg=b.plain_client_cg,
                  cpu_cgs=[b.plain_client_cg, plain_cg, proxy_cg], agent=False),
    }
    names = {"a": "(a) direct to the pod", "b": "(b) service address, envsteer HTTP/2 endpoint",
             "c": "(c) nginx grpc_pass, map on x-virtual-env"}
    vs = {"a": "direct", "c": "nginx"}
    rows = {}
    for kind, label in (("unary", "gRPC unary"), ("stream", "gRPC server streaming (20 msgs/call)")):
        for q, unit, better, what in (
                ("rps", "calls/s", "higher", "calls/s"), ("p50_us", "us", "lower", "latency p50"),
                ("p99_us", "us", "lower", "latency p99"),
                ("cpu_us", "us", "lower", "CPU per call (client, server, proxy or agent)")):
            for other in ("a", "c"):
                k = "h2_%s_%s_vs_%s" % (kind, q, vs[other])
                rows[k] = Row(k, "%s, %s" % (label, what), unit, names["b"], names[other], better,
                              None, fmt="%.1f" if q == "cpu_us" else "%.0f")
    # each path answers from the dev.proj1 pod (also the warm-up)
    grpc_check(b, b.client_cg(), "%s:%d" % (GRPC_VIP, GRPC_PORT), "envsteer")
    grpc_check(b, b.plain_client_cg, "%s:%d" % (GRPC_PLAIN_IP, GRPC_PORT), "direct")
    grpc_check(b, b.plain_client_cg, "%s:%d" % (GRPC_PROXY_IP, GRPC_PORT), "nginx")
    c0 = b.counters()
    raw = []
    for i in range(a.rounds):
        rec = {"round": i + 1}
        for kind, (body, method) in bodies.items():
            res = {}
            for v, p in paths.items():
                res[v] = h2load(b, "http://%s:%d/envsteer.H2/%s" % (p["ip"], GRPC_PORT, method), body,
                                a.duration, "h2-%s-%s" % (kind, v), p["client_cg"], p["cpu_cgs"],
                                n.agent.pid if p["agent"] else None)
            for q in ("rps", "p50_us", "p99_us", "cpu_us"):
                for other in ("a", "c"):
                    rows["h2_%s_%s_vs_%s" % (kind, q, vs[other])].add(res["b"][q], res[other][q])
            rec[kind] = res
            log("h2 round %d/%d %s: calls/s a %.0f b %.0f c %.0f; p99 us a %d b %d c %d; cpu us a %.0f "
                "b %.0f c %.0f" % (i + 1, a.rounds, kind, res["a"]["rps"], res["b"]["rps"], res["c"]["rps"],
                                   res["a"]["p99_us"], res["b"]["p99_us"], res["c"]["p99_us"],
                                   res["a"]["cpu_us"], res["b"]["cpu_us"], res["c"]["cpu_us"]))
        raw.append(rec)
    c1 = b.counters()
    diverted = c1.get("h2_diverted", 0) - c0.get("h2_diverted", 0)
    if diverted < a.rounds * 2 * a.h2_clients:
        raise BenchError("path (b): only %d connections diverted to the endpoint" % diverted)
    b.note("h2: h2load -c %d -m %d, %d s per run; CPU of (b) includes the agent's process"
           % (a.h2_clients, a.h2_streams, a.duration))
    return list(rows.values()), raw



SUITES = {"connect": suite_connect, "header": suite_header, "http": suite_http,
          "scale": suite_scale, "control": suite_control, "reroute": suite_reroute,
          "issue17": suite_issue17, "h2": suite_h2}


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
    request, for one keep-alive and one per-connection wrk run and one connect loop; with
    the issue 17 pods, also a keep-alive run between the pods that take no part (what the
    global tp_btf programs cost them)."""
    a = b.args
    b.set_agent_mode("header")
    path = "/proc/sys/kernel/bpf_stats_enabled"
    old = open(path).read().strip()
    out = []
    try:
        with open(path, "w") as f:
            f.write("1")
        url = "http://%s:%d/" % (SVC_IP, SVC_PORT)
        workloads = [
            ("keep-alive", lambda: b.wrk(url, False, a.duration, "stats-ka")),
            ("per-connection", lambda: b.wrk(url, True, a.duration, "stats-close")),
            ("connect loop", lambda: b.connloop(b.client_cg(), SVC_IP, SVC_PORT,
                                                a.connects, "stats-vip"))]
        if NS + "/np-client" in b.node.pods:
            np_url = "http://%s:%d/" % (NP_SERVER_IP, TARGET_PORT)
            workloads.append(("no part, keep-alive", lambda: b.wrk(
                np_url, False, a.duration, "stats-np-ka", np_cg(b, "np-client"),
                [np_cg(b, "np-client"), np_cg(b, "np-server")], None)))
        for name, fn in workloads:
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
        # what the verifier went through for each program (the limit is 1 000 000)
        ids = sorted(our_programs(b.node.pin_dir))
        tool = os.path.join(b.tools, "proginfo")
        insns = []
        if os.path.exists(tool):
            r = subprocess.run([tool] + [str(i) for i in ids], capture_output=True, text=True,
                               timeout=20)
            insns = sorted(line.split()[1:] for line in r.stdout.splitlines()
                           if line.count(" ") == 2)
        if insns:
            b.note("verifier, instructions processed: " +
                   ", ".join("%s %s" % (n, i) for n, i in insns))
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


def markdown(m, args, rows, attached, notes, stats, extra_tables=()):
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
    for title, table in extra_tables:
        p += ["## " + title, "", table, ""]
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


def enter_netns(path):
    """Moves this (single-threaded) process into the network namespace at path (setns)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            e = ctypes.get_errno()
            raise BenchError("setns %s: %s" % (path, os.strerror(e)))
    finally:
        os.close(fd)


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
    ap.add_argument("--h2-clients", type=int, default=4, help="h2 suite: h2load -c")
    ap.add_argument("--h2-streams", type=int, default=8, help="h2 suite: h2load -m")
    ap.add_argument("--max-loop-seconds", type=float, default=60.0)
    ap.add_argument("--scale-sizes", help="scaling suite: numbers of services, comma-separated "
                    "(default 10,1000,10000,100000; smoke 10,100)")
    ap.add_argument("--issue17-services", type=int, help="issue 17 suite: services loaded "
                    "(default 10000; smoke 100)")
    ap.add_argument("--issue17-tw-reuse", type=int, default=1, choices=(0, 1),
                    help="issue 17 suite: tcp_tw_reuse=1 in the clients' namespaces (0: the "
                    "namespace default, to see what TIME_WAIT does to the per-connection rows)")
    ap.add_argument("--cp-services", type=int, help="control plane: services (default 10000)")
    ap.add_argument("--cp-pods", type=int, help="control plane: pods (default 100000)")
    ap.add_argument("--cp-envs", type=int, help="control plane: environments (default 1000)")
    ap.add_argument("--cp-namespaces", type=int, default=100,
                    help="control plane: namespaces, one manifest file each")
    ap.add_argument("--cp-poll-ms", type=float, default=2.0,
                    help="control plane: /v1/status poll interval while an event is applied "
                    "(the polling takes CPU from the agent on a 2-CPU machine)")
    ap.add_argument("--cp-events", type=int, help="control plane: pod label changes "
                    "(default 20: each one re-reads every manifest, seconds at full size)")
    ap.add_argument("--cp-churn-pods", type=int, help="control plane, sustained churn: pods "
                    "in the fake API server (default 20000; the fake server's paged LIST is "
                    "too slow for 100 000)")
    ap.add_argument("--cp-churn-rate", type=float, default=200.0,
                    help="control plane: pod label changes per second in the churn run")
    ap.add_argument("--cp-agent-nice", default="0",
                    help="control plane: the agents' nice once started (default 0, a node agent's "
                    "priority, also when the bench runs under nice on a shared machine; 'keep': "
                    "the bench's own)")
    ap.add_argument("--cp-churn-seconds", type=float, help="control plane: length of the "
                    "churn run (default 60, smoke 3; 0: no churn run)")
    ap.add_argument("--lo-up", action="store_true", help="bring lo up first (run.sh starts "
                    "this script in a fresh network namespace)")
    ap.add_argument("--loopback", action="store_true", help="pods as processes in cgroups on "
                    "loopback addresses of this namespace, instead of pods in network namespaces "
                    "of their own on a node's bridge (the default)")
    ap.add_argument("--only", default=",".join(s for s in SUITES if s != "h2"),
                    help="suites, comma-separated: %s (h2 only when named)" % ", ".join(SUITES))
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
        sizes, cp = "10,100", (100, 1000, 10, 5)
    else:
        sizes, cp = "10,1000,10000,100000", (10000, 100000, 1000, 20)
    args.scale_sizes = [int(x) for x in (args.scale_sizes or sizes).split(",")]
    args.issue17_services = args.issue17_services or (100 if args.smoke else 10000)
    args.cp_services = args.cp_services or cp[0]
    args.cp_pods = args.cp_pods or cp[1]
    args.cp_envs = args.cp_envs or cp[2]
    args.cp_events = args.cp_events or cp[3]
    args.cp_namespaces = min(args.cp_namespaces, args.cp_services)
    args.cp_churn_pods = args.cp_churn_pods or (500 if args.smoke else 20000)
    if args.cp_churn_seconds is None:
        args.cp_churn_seconds = 3.0 if args.smoke else 60.0
    if not args.smoke:
        args.rounds = args.rounds or 7
        args.connects = args.connects or 20000
        args.duration = args.duration or 5
        args.out = args.out or os.path.join(HERE, "results", "h2.md" if args.only.strip() == "h2"
                                            else "latest.md")
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

    if args.lo_up:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
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
    for title, t in b.extra_tables:
        print()
        print(title)
        print(t)
    if stats:
        print()
        print(render_prog_stats(stats))
    for n in b.notes:
        print("note: " + n)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(markdown(m, args, rows, b.attached, b.notes, stats, b.extra_tables))
        log("wrote %s" % args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": m, "args": vars(args), "rows": [r.as_dict() for r in rows],
                       "metrics": [x.as_dict() for x in b.metrics],
                       "raw": raw, "prog_stats": stats, "attached": b.attached,
                       "notes": b.notes, "elapsed_s": elapsed}, f, indent=1)
        log("wrote %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
