"""Set-up shapes the e2e suites share (harness.py runs the nodes; this only says what goes on
them): object keys, a node's services, pods and servers, /metrics samples, `envsteer trace`."""
import json
import os
import subprocess
import threading
import time

from harness import wait_until


def keyer(ns):
    """k(name) -> "ns/name": the key of the object name of namespace ns."""
    def k(name):
        return "%s/%s" % (ns, name)
    return k


def populate(node, ns, services=(), pods=(), servers=(), server_args=None, server_script=None,
             **pod_defaults):
    """Puts the objects of one namespace on node, writes its manifests and starts the servers.

    services: (name, cluster_ip[, add_service kwargs]); port 80 -> 8080 unless said.
    pods: (name, ip, app, env[, add_pod kwargs]); env None: no env label. pod_defaults are
    add_pod kwargs for every pod (e.g. port=8080).
    servers: names of the pods whose server starts (with server_args / server_script).
    """
    for name, cluster_ip, *extra in services:
        node.add_service(ns, name, cluster_ip, **(extra[0] if extra else {}))
    for name, ip, app, env, *extra in pods:
        kw = dict(pod_defaults, app=app)
        if env is not None:
            kw["env"] = env
        kw.update(extra[0] if extra else {})
        node.add_pod(ns, name, ip, **kw)
    node.write_manifests()
    for name in servers:
        node.start_server("%s/%s" % (ns, name), args=server_args, script=server_script)
    return node


def run_json(node, key, argv, timeout=60.0):
    """Runs argv in the pod `key` and returns the JSON of its last output line; a failure or no
    output fails the test, with the agent's log."""
    r = node.run_in_pod(key, argv, timeout=timeout)
    lines = (r.stdout or "").strip().splitlines()
    assert r.returncode == 0 and lines, (r.returncode, r.stdout, node.agent_log_text(4000))
    return json.loads(lines[-1])


def metric(node, name, labels=None, default=None):
    """The value of one sample of the node agent's /metrics, or default when it has none."""
    code, body = node.admin_get("/metrics")
    assert code == 200, body
    want = name + ("{" + ",".join('%s="%s"' % kv for kv in labels.items()) + "}" if labels else "")
    for line in body.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return default


class Trace:
    """`envsteer trace` running against the node's agent; output collected at the end."""

    def __init__(self, node, *args):
        self.node = node
        self.out_path = os.path.join(node.tmp, "trace-%d.out" % time.monotonic_ns())
        self.out = open(self.out_path, "w")
        self.err = open(self.out_path + ".err", "w")
        # one client at a time here: the previous one detaches within a couple of heartbeats
        wait_until(lambda: metric(node, "envsteer_trace_clients", default=0) == 0, 10, what="no trace client")
        self.proc = subprocess.Popen([node.bin, "trace", "--admin-socket", node.admin_socket] + list(args),
                                     stdout=self.out, stderr=self.err, stdin=subprocess.DEVNULL)
        wait_until(lambda: metric(node, "envsteer_trace_clients", default=0) == 1 or self.proc.poll() is not None,
                   10, what="trace client attached")
        assert self.proc.poll() is None, self.text(err=True)

    def text(self, err=False):
        with open(self.out_path + (".err" if err else "")) as f:
            return f.read()

    def finish(self, timeout=20):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("envsteer trace did not stop by itself:\n" + self.text())
        finally:
            self.out.close()
            self.err.close()
        assert rc == 0, (rc, self.text(), self.text(err=True))
        return self.text()

    def events(self, timeout=20):
        return [json.loads(l) for l in self.finish(timeout).splitlines() if l.strip()]


def in_background(fn):
    """Runs fn() in a thread; returns (thread, box): box["result"] or box["error"] once joined."""
    box = {}

    def run():
        try:
            box["result"] = fn()
        except Exception as e:  # noqa: BLE001
            box["error"] = e
    t = threading.Thread(target=run)
    t.start()
    return t, box
