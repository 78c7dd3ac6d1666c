"""Nodes and pods as in a real cluster: every pod in its own network namespace, two nodes.

    node n1: netns <prefix>-n1-host                      node n2: netns <prefix>-n2-host
    agent 1 (--cgroup-root, --bpffs of n1)                agent 2 (its own cgroup subtree, pins)
    br0 198.18.1.1/24  fd00:18:1::1/64                    br0 198.18.2.1/24  fd00:18:2::1/64
     |     l2 198.18.255.1/30 fd00:18:ff::1  <== veth ==>  l1 198.18.255.2/30 fd00:18:ff::2   |
     |        route 198.18.2.0/24, fd00:18:2::/64 via n2     route 198.18.1.0/24, ... via n1  |
     +-- veth p<N> == eth0 of pod netns <prefix>-n1-p<N>    +-- veth == eth0 of pod netns ...
           198.18.1.<N>/24  fd00:18:1::<N>/64                    198.18.2.<N>/24  fd00:18:2::<N>/64
           default via br0; processes in the pod's             (the same on n2)
           cgroup <n1 cgroup root>/pod-<ns>-<name>
    services: 198.19.0.<i> and fd00:96::<i> (dual stack), configured nowhere: only steering
    reaches them.

A node's agent runs inside the node's namespace (it plays the node's host namespace), or with
agent_netns "own" in a namespace of its own with a veth into the bridge, as the DaemonSet runs
it (hostNetwork: false): then it shares no namespace with the pods nor the node. The test
process stays outside both nodes and talks to the agents over their admin unix sockets. Each
node's manifests list every pod: its own as local (with their cgroup), the other node's as
remote. Nothing leaves these namespaces: every address above exists only inside them.
Everything (processes, cgroups, pins, namespaces, and with them the veths and bridges) is
removed by close(), by the harness's atexit hook, and by harness.sweep_stale() after a killed
run (the namespaces are named envsteer-e2e-<pid>-...).
"""
import base64
import json
import os
import re
import subprocess

import harness

POD_V4 = "198.18.%d.%d"
POD_V6 = "fd00:18:%d::%x"
GW_V4 = "198.18.%d.1"
GW_V6 = "fd00:18:%d::1"
LINK_V4 = "198.18.255.%d"
LINK_V6 = "fd00:18:ff::%d"
SVC_V4 = "198.19.0.%d"
SVC_V6 = "fd00:96::%x"


DAEMONSET = os.path.join(harness.REPO, "daemonset", "daemonset.yaml")


def daemonset_caps():
    """The capabilities the DaemonSet gives the agent container (its `add:` list, after
    `drop: ["ALL"]`), e.g. ["BPF", "NET_ADMIN", ...]."""
    with open(DAEMONSET) as f:
        text = f.read()
    m = re.search(r'^\s*drop: \["ALL"\]\s*\n\s*add: \[([^\]]*)\]', text, re.M)
    if not m:
        raise harness.HarnessError("no capabilities drop/add in %s" % DAEMONSET)
    return [c.strip().strip('"') for c in m.group(1).split(",") if c.strip()]


def _sysctl(netns, *settings):
    r = subprocess.run(netns.prefix() + ["sysctl", "-qw"] + list(settings), capture_output=True,
                       text=True, timeout=10)
    if r.returncode != 0:
        raise harness.HarnessError("sysctl in %s: %s" % (netns.name, r.stderr.strip()))


class TopoNode(harness.Node):
    """A harness node whose agent runs in the node's own network namespace (with a bridge);
    its pods get their own namespaces (add_pod through Topology)."""

    def __init__(self, idx, name, agent_netns="node", agent_caps=None, **kw):
        super().__init__(name, **kw)
        self.idx = idx
        self.agent_caps = agent_caps  # None: all of root's; else the agent's bounding set
        self._next_host = 10
        try:
            self.host = self.add_netns(name + "-host")
            self.host.ip("link", "add", "br0", "type", "bridge")
            self.host.add_addr(GW_V4 % idx + "/24", dev="br0")
            self.host.add_addr(GW_V6 % idx + "/64", dev="br0")
            self.host.ip("link", "set", "br0", "up")
            _sysctl(self.host, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
            # "node": the agent in the node's namespace (a systemd install, hostNetwork);
            # "own": in a pod namespace of its own, as the DaemonSet runs it (hostNetwork false)
            self.agent_ns = self.host
            if agent_netns == "own":
                self.agent_ns, _, _ = self.make_pod_netns("agent")
        except Exception:
            self.close()
            raise

    def agent_cmd(self, extra_args=(), port=None):
        pre = self.agent_ns.prefix()
        if self.agent_caps is not None:
            # root with exactly these capabilities (what a container with drop ALL + add gets)
            pre += ["setpriv", "--bounding-set",
                    ",".join(["-all"] + ["+" + c.lower() for c in self.agent_caps]), "--"]
        return pre + super().agent_cmd(extra_args, port)

    def _popen(self, argv, cgroup_dir, log_name, netns=None, stdout=None):
        # a pod whose processes run as another user (add_pod(run_as=uid))
        for p in self.pods.values():
            uid = getattr(p, "run_as", None)
            if uid is not None and (cgroup_dir + "/").startswith(p.cgroup_dir + "/"):
                argv = ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups",
                        "--"] + list(argv)
                break
        return super()._popen(argv, cgroup_dir, log_name, netns, stdout)

    def _spec_file(self, text):
        # inline (the node's temp dir is root's only, and pods may run as another user)
        return text if len(text) < 60000 else super()._spec_file(text)

    def agent_pid(self):
        return self.agent.pid if self.agent_running() else None

    def admin_get(self, path, timeout=5.0):
        # the TCP admin address is on the loopback of the node's namespace: use the socket
        return self.socket_get(path, timeout)

    def host_session(self, target, exchanges, timeout=10.0, gap=0.05):
        """Raw HTTP on one connection from the node's own namespace (as an ingress or a node
        process would call a pod): podclient.py run there, in no pod's cgroup (never steered).
        exchanges as harness.Node.session."""
        spec = json.dumps([{"pieces": [base64.b64encode(p).decode() for p in ex["pieces"]],
                            "responses": ex.get("responses", 1)} for ex in exchanges])
        argv = self.host.prefix() + [harness.PYTHON, harness.PODCLIENT, "--to",
                                     self._target(target), "--session", spec, "--gap", str(gap),
                                     "--timeout", str(timeout)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 20,
                           stdin=subprocess.DEVNULL)
        return self._parse_client(r)

    def make_pod_netns(self, name):
        """A pod namespace with eth0 (a veth into br0) and its two addresses; returns
        (netns, ipv4, ipv6)."""
        n = self._next_host
        self._next_host += 1
        if n > 250:
            raise harness.HarnessError("node %s: too many pods" % self.name)
        ns = self.add_netns("%s-%s" % (self.name, name if name == "agent" else "p%d" % n))
        v4, v6 = POD_V4 % (self.idx, n), POD_V6 % (self.idx, n)
        port = "p%d" % n
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.host.name)
        self.host.ip("link", "set", port, "master", "br0", "up")
        ns.add_addr(v4 + "/24", dev="eth0")
        ns.add_addr(v6 + "/64", dev="eth0")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("route", "add", "default", "via", GW_V4 % self.idx)
        ns.ip("-6", "route", "add", "default", "via", GW_V6 % self.idx)
        return ns, v4, v6


class Topology:
    """Two (or more) TopoNodes joined by veths, with routes between their pod ranges.

    add_service(ns, name, i): a dual-stack ClusterIP (198.19.0.i, fd00:96::i) on every node.
    add_pod(node, ns, name, app, env): a pod on node (1-based) with its own namespace; it is
    local on that node and remote on the others. start(servers): writes the manifests,
    starts the pod servers (podserver.py on both addresses), then the agents."""

    def __init__(self, name, nodes=2, default_env="dev", agent_netns=None, agent_caps=None,
                 **node_kw):
        """agent_netns: {node index: "node" | "own"} (default "node"); agent_caps: {node
        index: [capability names]} (default: all of root's)."""
        self.nodes = []
        self.pods = {}  # key -> (node, Pod)
        try:
            for i in range(1, nodes + 1):
                self.nodes.append(TopoNode(i, "%s-n%d" % (name, i), default_env=default_env,
                                           agent_netns=(agent_netns or {}).get(i, "node"),
                                           agent_caps=(agent_caps or {}).get(i),
                                           **node_kw))
            for a in range(len(self.nodes)):
                for b in range(a + 1, len(self.nodes)):
                    self._link(self.nodes[a], self.nodes[b])
        except Exception:
            self.close()
            raise

    def _link(self, a, b):
        # one /30 per pair (a < b): 198.18.255.(4k+1, 4k+2), k = 0 for nodes 1 and 2
        k = (a.idx - 1) * 8 + (b.idx - 2)
        ia, ib = 4 * k + 1, 4 * k + 2
        dev_a, dev_b = "l%d" % b.idx, "l%d" % a.idx
        a.host.ip("link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", b.host.name)
        a.host.add_addr(LINK_V4 % ia + "/30", dev=dev_a)
        b.host.add_addr(LINK_V4 % ib + "/30", dev=dev_b)
        a.host.add_addr(LINK_V6 % ia + "/126", dev=dev_a)
        b.host.add_addr(LINK_V6 % ib + "/126", dev=dev_b)
        a.host.ip("link", "set", dev_a, "up")
        b.host.ip("link", "set", dev_b, "up")
        a.host.ip("route", "add", "198.18.%d.0/24" % b.idx, "via", LINK_V4 % ib)
        b.host.ip("route", "add", "198.18.%d.0/24" % a.idx, "via", LINK_V4 % ia)
        a.host.ip("-6", "route", "add", "fd00:18:%d::/64" % b.idx, "via", LINK_V6 % ib)
        b.host.ip("-6", "route", "add", "fd00:18:%d::/64" % a.idx, "via", LINK_V6 % ia)

    def node(self, i):
        return self.nodes[i - 1]

    def add_service(self, ns, name, i, port=80, target_port=8080, **kw):
        for n in self.nodes:
            svc = n.add_service(ns, name, [SVC_V4 % i, SVC_V6 % i], port, target_port, **kw)
        return svc

    def add_pod(self, node, ns, name, app=None, env=None, server_args=(), run_as=None, **kw):
        home = self.node(node)
        netns, v4, v6 = home.make_pod_netns(name)
        pod = None
        for n in self.nodes:
            p = n.add_pod(ns, name, [v4, v6], app=app, env=env, local=n is home,
                          netns=netns if n is home else None, **kw)
            if n is home:
                pod = p
                p.run_as = run_as
                p.server_args = ["--also-ip", v6] + list(server_args)
        self.pods[pod.key] = (home, pod)
        return pod

    def home(self, key):
        """The node a pod runs on."""
        return self.pods[key][0]

    def ips(self, key):
        return self.pods[key][1].ips

    def write(self):
        for n in self.nodes:
            n.write_manifests()

    def start(self, servers=(), agent_args=()):
        self.write()
        for key in servers:
            self.home(key).start_server(key)
        for n in self.nodes:
            n.start_agent(list(agent_args))
        return self

    # calls run in the calling pod, on the node it lives on
    def request(self, key, target, port=None, path="/", timeout=5.0):
        return self.home(key).request(key, target, port, path, timeout)

    def call_chain(self, key, targets, timeout=10.0):
        return self.home(key).call_chain(key, targets, timeout)

    def session(self, key, target, exchanges, **kw):
        return self.home(key).session(key, target, exchanges, **kw)

    def udp(self, key, target, port=None, connected=False):
        return self.home(key).udp(key, target, port, connected)

    def close(self):
        for n in reversed(self.nodes):
            n.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
