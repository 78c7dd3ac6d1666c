"""Faults that must lose nothing: each runs with traffic (a bounded connect loop from a
managed pod) and accounts for every request (all answered, by the right pod).

Covered elsewhere: agent SIGKILL/SIGTERM + restart under a connect loop (test_lifecycle.py
test_restart_under_connect_loop_loses_nothing), a second agent on the same pin directory
(test_lifecycle.py test_second_agent_on_the_same_pin_directory_refuses), bad objects in the
manifests (test_lifecycle.py), a short API outage (test_kubernetes.py).

Here:
- the manifest file replaced by a broken one, with traffic: last good state kept, /readyz and
  /metrics say so, recovery when the file is fixed;
- the Kubernetes API down for 20 s ("minutes" in production, bounded here to keep the suite
  fast: the agent's behaviour does not change with the length of the outage once its
  back-off is at its ceiling), and the API answering garbage: the same;
- maps full: a clear error, a metric and readiness, the entries already there intact;
- a pod's cgroup removed while it has a connection open;
- a pod IP reused by a new pod of another environment;
- bad objects (an env label that is no env name, a Service on a taken address, cgroup
  annotations outside the mount, on the root, or on another pod's cgroup) skipped one by
  one, reported, while everything else applies;
- a pod's cgroup missing while the source is broken or the maps are full: the rescan for
  the cgroup never clears the error.
"""
import base64
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

import fixtures
import harness
from harness import frontend, wait_until
import fakeapi

NS = "flt"
VIP, PORT, TP = "127.96.50.1", 80, 8080
S = "%s:%d" % (VIP, PORT)
RESOURCES = ("services", "endpointslices", "pods (labelled)", "pods (this node)")


k = fixtures.keyer(NS)


metric = fixtures.metric


def readyz(node):
    return node.admin_get("/readyz", timeout=3)


def check_loop(res, count, allowed):
    """Every request answered, each by an allowed pod."""
    assert res["attempts"] == count, res
    assert res["failures"] == 0, res
    assert sum(res["pods"].values()) == count, res
    assert set(res["pods"]) <= set(allowed), res


def populate(node, base):
    fixtures.populate(node, NS, services=[("s", VIP, {"port": PORT, "target_port": TP})],
                      pods=[("s-dev", base + ".1", "s", "dev"), ("s-proj1", base + ".2", "s", "dev.proj1"),
                            ("c-dev", base + ".101", "client", "dev"),
                            ("c-proj1", base + ".102", "client", "dev.proj1"),
                            ("c-proj2", base + ".103", "client", "dev.proj2")],
                      servers=("s-dev", "s-proj1"), port=TP)


def resolved(node, frm, env, pods, timeout=10.0):
    return node.wait_explain(frm, k("s"), lambda ex: (frontend(ex, S).get("resolved_env") == env and
                                                      harness.backend_pods(frontend(ex, S)) == pods),
                             timeout=timeout)


# --------------------------------------------------------------------------- manifests


def test_broken_manifest_under_traffic_keeps_state_and_says_so(make_node):
    node = make_node("fman", default_env="dev")
    populate(node, "127.1.50")
    node.start_agent()
    loop = node.start_loop(k("c-proj1"), VIP, PORT, count=1200, duration=6.0)
    # the whole file replaced by a broken one (what a bad `kubectl get -o yaml > file` does)
    node.write_raw_manifest("cluster.yaml", "apiVersion: v1\nkind: List\nitems:\n- kind: Service\n  metadata: [\n")
    wait_until(lambda: readyz(node)[0] == 503, 10, what="/readyz 503")
    code, body = readyz(node)
    assert "cluster.yaml" in body and "serving the last good state" in body, body
    assert metric(node, "envsteer_last_sync_failed") == 1
    assert metric(node, "envsteer_sync_failures_total", {"reason": "source"}) >= 1
    assert metric(node, "envsteer_last_sync_failed_reason", {"reason": "source"}) == 1
    assert metric(node, "envsteer_ready") == 0
    assert metric(node, "envsteer_map_entries", {"map": "es_frontends"}) == 2  # TCP and UDP
    time.sleep(1.0)
    node.write_manifests()  # fixed: recovers by itself
    wait_until(lambda: readyz(node)[0] == 200, 10, what="/readyz 200 again")
    assert metric(node, "envsteer_last_sync_failed") == 0
    assert metric(node, "envsteer_ready") == 1
    check_loop(loop.result(), 1200, [k("s-proj1")])


# --------------------------------------------------------------------------- bad objects


def skipped(node):
    return {(x["kind"], x["key"], x["reason"]) for x in node.status_http()["skipped"]}


def test_bad_objects_are_skipped_one_by_one_and_the_rest_applies(make_node):
    """One change holds a good pod and bad objects of every kind: the good pod is routed,
    each bad object is left out, listed in status, counted by reason and logged once; the
    sync is ok (ready). Fixing them clears the report."""
    node = make_node("fbad", default_env="dev")
    populate(node, "127.1.55")
    node.start_agent()
    loop = node.start_loop(k("c-dev"), VIP, PORT, count=1200, duration=8.0)
    offset = len(node.agent_log_text(limit=None))
    # the good part of the change: a dev.proj2 variant of s
    node.add_pod(NS, "s-proj2", "127.1.55.3", app="s", env="dev.proj2", port=TP)
    node.start_server(k("s-proj2"))
    # the bad parts, in the same write:
    node.add_pod(NS, "s-badenv", "127.1.55.4", app="s", env="dev..x", port=TP)  # a legal label value
    node.start_server(k("s-badenv"))  # it would answer if it were ever chosen
    node.add_service(NS, "zdup", VIP, PORT, TP, selector={"app": "s"})  # s's address, later by key
    ann = harness.CGROUP_ANNOTATION
    node.add_pod(NS, "zz-escape", "127.1.55.5", env="dev", local=False,
                 annotations={ann: "../../../../etc"})                          # outside the mount
    node.add_pod(NS, "zz-root", "127.1.55.6", env="dev.proj1", local=False,
                 annotations={ann: node.cgroup_rel})                             # the root itself
    node.add_pod(NS, "zz-shared", "127.1.55.7", env="dev.proj2", local=False,
                 annotations={ann: node.pod(k("c-proj1")).cgroup_rel})          # c-proj1's cgroup
    node.write_manifests()
    resolved(node, k("c-proj2"), "dev.proj2", [k("s-proj2")])
    want = {("Pod", k("s-badenv"), "invalid_env"), ("Service", k("zdup"), "address_in_use"),
            ("Pod", k("zz-escape"), "invalid_cgroup"), ("Pod", k("zz-root"), "cgroup_outside_root"),
            ("Pod", k("zz-shared"), "cgroup_shared")}
    wait_until(lambda: skipped(node) == want, 10, what="the bad objects listed as skipped")
    assert readyz(node)[0] == 200, readyz(node)
    assert metric(node, "envsteer_last_sync_failed") == 0
    assert metric(node, "envsteer_ready") == 1
    for kind, reason, n in (("Pod", "invalid_env", 1), ("Service", "address_in_use", 1),
                            ("Pod", "invalid_cgroup", 1), ("Pod", "cgroup_outside_root", 1),
                            ("Pod", "cgroup_shared", 1), ("EndpointSlice", "invalid_address", 0)):
        assert metric(node, "envsteer_objects_skipped", {"kind": kind, "reason": reason}) == n, (kind, reason)
    st = node.status_http()
    msg = {x["key"]: x for x in st["skipped"]}
    assert msg[k("s-badenv")]["field"] == "metadata.labels.virtual-env", msg
    assert "dev..x" in msg[k("s-badenv")]["message"], msg
    assert k("s") in msg[k("zdup")]["message"] and "127.96.50.1:80" in msg[k("zdup")]["message"], msg
    assert k("c-proj1") in msg[k("zz-shared")]["message"], msg
    # the shared cgroup stays c-proj1's (first by key), steered by its own env
    resolved(node, k("c-proj1"), "dev.proj1", [k("s-proj1")])
    r = node.request(k("c-proj1"), VIP, PORT)
    assert r["ok"] and r["answer"]["pod"] == k("s-proj1"), r
    # the bad pod is no backend of any env (not the default's either), and explain says why
    ex = node.explain(k("c-dev"), k("s"))
    assert harness.backend_pods(frontend(ex, S)) == [k("s-dev")], ex
    r = node.cli("explain", "--from", k("s-badenv"), "--to", k("s"), "--admin-socket", node.admin_socket)
    assert r.returncode != 0 and "dev..x" in r.stdout + r.stderr, (r.stdout, r.stderr)
    # one log line per skipped object, not one per sync
    node.sighup_agent()
    wait_until(lambda: len(re.findall(r"applied SIGHUP", node.agent_log_text(limit=None)[offset:])) >= 1, 10,
               what="SIGHUP applied")
    log = node.agent_log_text(limit=None)[offset:]
    for _, key, _ in want:
        assert len(re.findall(r"skipped: (Pod|Service) " + re.escape(key) + ":", log)) == 1, (key, log)
    check_loop(loop.result(), 1200, [k("s-dev")])
    # fixed: nothing is skipped, the logs say so
    for key in want:
        if key[0] == "Pod":
            node.remove_pod(key[1], write=False)
    node.remove_service(k("zdup"), write=False)
    node.write_manifests()
    wait_until(lambda: skipped(node) == set(), 10, what="nothing skipped")
    assert metric(node, "envsteer_objects_skipped", {"kind": "Pod", "reason": "invalid_env"}) == 0
    assert "no longer skipped: Pod %s metadata.labels.virtual-env" % k("s-badenv") in node.agent_log_text(limit=None)
    resolved(node, k("c-proj2"), "dev.proj2", [k("s-proj2")])


def test_bad_objects_at_startup_are_skipped_and_the_rest_starts(make_node):
    node = make_node("fbadstart", default_env="dev")
    populate(node, "127.1.56")
    node.add_pod(NS, "s-badenv", "127.1.56.4", app="s", env="-dev..x-")
    node.add_service(NS, "zdup", VIP, PORT, TP)
    node.write_manifests()
    node.start_agent()
    assert skipped(node) == {("Pod", k("s-badenv"), "invalid_env"), ("Service", k("zdup"), "address_in_use")}
    resolved(node, k("c-proj1"), "dev.proj1", [k("s-proj1")])
    assert metric(node, "envsteer_last_sync_failed") == 0


# --------------------------------------------------------------------------- errors stay


@pytest.mark.parametrize("fault", ["broken_file", "maps_full"])
def test_a_missing_pod_cgroup_never_clears_an_error(make_node, fault):
    """A local pod whose cgroup does not exist yet makes the agent look again every 2 s.
    Those rescans apply the last good state; they must not clear an error: the source
    stays broken (or its state unapplied) until it is fixed, and /readyz and
    envsteer_last_sync_failed say so all along. The cgroup, when it appears, is found."""
    node = make_node("fmiss-" + fault.replace("_", "-"), default_env="dev")
    args = []
    populate(node, "127.1.57" if fault == "broken_file" else "127.1.58")
    late = node.add_pod(NS, "c-late", "127.1.57.120" if fault == "broken_file" else "127.1.58.120",
                        app="client", env="dev.proj1")
    if fault == "maps_full":
        cfg = os.path.join(node.tmp, "config.yaml")
        with open(cfg, "w") as f:
            f.write("limits:\n  frontends: 2\n")  # s, TCP and UDP
        args = ["--config", cfg]
    node.write_manifests()
    os.rmdir(late.cgroup_dir)  # the kubelet has not made it yet
    node.start_agent(args)
    assert readyz(node)[0] == 200
    if fault == "broken_file":
        node.write_raw_manifest("zz-broken.yaml", "kind: Service\nmetadata: [\n")
    else:
        node.add_service(NS, "v", "127.96.58.3", PORT, TP, selector={"app": "s"}, write=True)
    wait_until(lambda: readyz(node)[0] == 503, 10, what="/readyz 503")
    t_end = time.monotonic() + 5.0  # more than two rescans
    while time.monotonic() < t_end:
        code, body = readyz(node)
        assert code == 503, "a rescan cleared the error: %s" % body
        assert metric(node, "envsteer_last_sync_failed") == 1
        time.sleep(0.25)
    st = node.status_http()
    assert st["sync"]["last_error"], st["sync"]
    # listed as missing (a warning, not the error), structured
    assert st["model"]["missing_cgroups"] == [{"pod": k("c-late"), "cgroup": late.cgroup_rel}], st["model"]
    assert metric(node, "envsteer_pod_cgroups_missing") == 1
    # the cgroup appears: the rescan finds it (the last good state has the pod), still not ready
    os.makedirs(late.cgroup_dir)
    resolved(node, k("c-late"), "dev.proj1", [k("s-proj1")])
    wait_until(lambda: metric(node, "envsteer_pod_cgroups_missing") == 0, 10, what="no cgroup missing")
    if fault == "broken_file":
        assert readyz(node)[0] == 503
        node.remove_raw_manifest("zz-broken.yaml")
    else:
        node.remove_service(k("v"))
    wait_until(lambda: readyz(node)[0] == 200, 10, what="/readyz 200 once fixed")
    assert metric(node, "envsteer_last_sync_failed") == 0


# --------------------------------------------------------------------------- maps full


def test_maps_full_keeps_existing_entries(make_node):
    node = make_node("ffull", default_env="dev")
    cfg = os.path.join(node.tmp, "config.yaml")
    with open(cfg, "w") as f:
        f.write("limits:\n  frontends: 4\n")
    populate(node, "127.1.51")
    node.add_service(NS, "u", "127.96.51.2", PORT, TP, selector={"app": "s"})
    node.write_manifests()
    node.start_agent(["--config", cfg])
    # s and u, TCP and UDP each: the map is full
    assert metric(node, "envsteer_map_entries", {"map": "es_frontends"}) == 4
    assert metric(node, "envsteer_map_capacity", {"map": "es_frontends"}) == 4
    offset = len(node.agent_log_text(limit=None))
    loop = node.start_loop(k("c-proj1"), VIP, PORT, count=1000, duration=5.0)
    try:
        # a third service's addresses do not fit: nothing of the change is written
        node.add_service(NS, "v", "127.96.51.3", PORT, TP, selector={"app": "s"})
        node.set_ready(k("s-proj1"), False, write=False)
        node.write_manifests()
        wait_until(lambda: readyz(node)[0] == 503, 10, what="/readyz 503")
        code, body = readyz(node)
        assert re.search(r"maps full: 6 service addresses do not fit in map es_frontends \(4 entries; "
                         r"raise limits\.frontends\)", body), body
        log = node.agent_log_text(limit=None)[offset:]
        assert "do not fit in map es_frontends" in log and "keeping the last good state" in log, log
        assert metric(node, "envsteer_sync_failures_total", {"reason": "map_full"}) >= 1
        assert metric(node, "envsteer_last_sync_failed_reason", {"reason": "map_full"}) == 1
        assert metric(node, "envsteer_map_entries", {"map": "es_frontends"}) == 4
        # the entries already there are intact: s still steers by env (s-proj1 stays ready
        # for the kernel: half a change is never applied), u still answers
        ex = node.explain(k("c-proj1"), k("s"))
        assert frontend(ex, S)["resolved_env"] == "dev.proj1", ex
        r = node.request(k("c-dev"), "127.96.51.2", PORT)
        assert r["ok"] and r["answer"]["pod"] == k("s-dev"), r
        r = node.request(k("c-dev"), "127.96.51.3", PORT)
        assert not r["ok"] and r["errno"] == "ECONNREFUSED", r  # v: never written
    finally:
        node.remove_service(k("v"), write=False)
        node.set_ready(k("s-proj1"), True)
    wait_until(lambda: readyz(node)[0] == 200, 10, what="/readyz 200 again")
    assert metric(node, "envsteer_last_sync_failed_reason", {"reason": "map_full"}) == 0
    check_loop(loop.result(), 1000, [k("s-proj1")])


# --------------------------------------------------------------------------- pods


def test_pod_cgroup_removed_while_it_has_a_connection(make_node):
    """The caller's pod moves to a new cgroup (a container restart, a kubelet cgroup driver
    change) and its old cgroup is removed while a keep-alive connection it opened before is
    in use: every request on that connection is answered by the pod it was steered to, the
    agent drops the dead cgroup, and new connects from the new cgroup are steered."""
    node = make_node("fcg", default_env="dev")
    populate(node, "127.1.52")
    node.stop_server(k("s-proj1"))
    node.start_server(k("s-proj1"), args=["--keepalive"])
    node.start_agent()
    pod = node.pod(k("c-proj1"))
    old_dir = pod.cgroup_dir
    n = 16
    spec = os.path.join(node.tmp, "session.json")
    req = harness.http_request("/")
    # two pieces per request: the session sleeps --gap between them
    pieces = [base64.b64encode(req[:8]).decode(), base64.b64encode(req[8:]).decode()]
    with open(spec, "w") as f:
        json.dump([{"pieces": pieces, "responses": 1}] * n, f)
    # the client runs directly in the pod's cgroup (no child cgroup), so it can be moved
    client = node._popen([harness.PYTHON, harness.PODCLIENT, "--to", S, "--session", "@" + spec,
                          "--gap", "0.3", "--timeout", "30"], old_dir, "session.log", stdout=subprocess.PIPE)
    time.sleep(1.5)  # a few exchanges on the connection
    new_rel = pod.cgroup_rel + "-restarted"
    new_dir = os.path.join(node.cg_mount, new_rel)
    os.mkdir(new_dir)
    try:
        with open(os.path.join(new_dir, "cgroup.procs"), "w") as f:
            f.write(str(client.pid))
        # the sh wrapper exec'd podclient: one process. The old cgroup is now empty: remove it.
        wait_until(lambda: open(os.path.join(old_dir, "cgroup.procs")).read().strip() == "", 5,
                   what="old cgroup empty")
        os.rmdir(old_dir)
        pod.cgroup_dir, pod.cgroup_rel = new_dir, new_rel
        node.write_manifests()
        out, _ = client.communicate(timeout=40)
        node.procs.remove(client)
        res = json.loads(out.strip().splitlines()[-1])
        assert res["ok"], res
        assert res["peername"] == S, res
        answers = [x["responses"][0]["answer"]["pod"] for x in res["exchanges"]]
        assert answers == [k("s-proj1")] * n, answers
        # the new cgroup is managed: connects from it are steered by the pod's env
        resolved(node, k("c-proj1"), "dev.proj1", [k("s-proj1")])
        loop = node.start_loop(k("c-proj1"), VIP, PORT, count=200, duration=1.0)
        check_loop(loop.result(), 200, [k("s-proj1")])
        assert metric(node, "envsteer_map_entries", {"map": "es_pods"}) == 5
        assert readyz(node)[0] == 200
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)
        if os.path.isdir(old_dir):
            os.rmdir(old_dir)


def test_pod_ip_reused_by_a_pod_of_another_env(make_node):
    node = make_node("fip", default_env="dev")
    populate(node, "127.1.53")
    node.start_agent()
    ip = node.pod(k("s-proj1")).ip
    loop1 = node.start_loop(k("c-proj1"), VIP, PORT, count=1500, duration=7.0)
    loop2 = node.start_loop(k("c-proj2"), VIP, PORT, count=1500, duration=7.0)
    time.sleep(1.0)
    # s-proj1 goes away (out of the endpoints first, as the endpoints controller does) ...
    old = node.pod(k("s-proj1"))
    del node.pods[old.key]
    node.write_manifests()
    resolved(node, k("c-proj1"), "dev", [k("s-dev")])
    time.sleep(0.5)  # connections already made to it finish
    harness._terminate(old.server)
    node._remove_cgroup_tree(old.cgroup_dir)
    # ... and a new pod of dev.proj2 gets its IP
    node.add_pod(NS, "s-proj2", ip, app="s", env="dev.proj2", port=TP)
    node.start_server(k("s-proj2"))  # listening before it is an endpoint (it is ready)
    node.write_manifests()
    resolved(node, k("c-proj2"), "dev.proj2", [k("s-proj2")])
    r1, r2 = loop1.result(), loop2.result()
    # dev.proj1 callers never reach the new pod behind the old IP; dev.proj2 callers move to it
    check_loop(r1, 1500, [k("s-proj1"), k("s-dev")])
    check_loop(r2, 1500, [k("s-dev"), k("s-proj2")])
    assert r1["pods"].get(k("s-dev"), 0) > 0 and r2["pods"].get(k("s-proj2"), 0) > 0, (r1, r2)
    for _ in range(5):
        r = node.request(k("c-proj1"), VIP, PORT)
        assert r["ok"] and r["answer"]["pod"] == k("s-dev"), r


# --------------------------------------------------------------------------- Kubernetes API


@pytest.fixture
def kube(e2e_prerequisites, tmp_path):
    from test_kubernetes import KubeNode
    api = fakeapi.FakeAPI(bookmark_interval=1.0)
    api.start()
    kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"), auth="token-file")
    node = KubeNode("fkube", api, kubeconfig, default_env="dev")
    try:
        ns = "k8s"
        api.create(fakeapi.make_service(ns, "a", "127.96.31.1", [("http", 80, 8080)], selector={"app": "a"}))
        node.kube_pod("a-dev", "127.1.54.1", env="dev", app="a")
        node.kube_pod("a-proj1", "127.1.54.2", env="dev.proj1", app="a")
        node.kube_pod("c-proj1", "127.1.54.12", env="dev.proj1", app="c")
        node.slice([("a-dev", True), ("a-proj1", True)])
        node.start_server("k8s/a-dev")
        node.start_server("k8s/a-proj1")
        node.start_agent()
        yield node
    finally:
        node.close()
        api.stop()


def _relabel_recovers(kube):
    """A change made after the fault is applied: recovery is automatic."""
    obj = kube.api.get("pods", "k8s", "c-proj1")
    obj["metadata"]["labels"]["virtual-env"] = "dev"
    kube.api.update(obj)
    wait_until(lambda: (kube.request("k8s/c-proj1", "127.96.31.1", 80).get("answer") or {}).get("pod")
               == "k8s/a-dev", 40, what="the relabel applied after recovery")
    wait_until(lambda: readyz(kube)[0] == 200, 40, what="/readyz 200")
    assert metric(kube, "envsteer_ready") == 1


def test_api_down_for_a_while_under_traffic(kube):
    down_for = 20.0
    loop = kube.start_loop("k8s/c-proj1", "127.96.31.1", 80, count=2000, duration=down_for + 4)
    time.sleep(1.0)
    kube.api.down()
    try:
        wait_until(lambda: readyz(kube)[0] == 503, 30, what="/readyz 503")
        assert "serving the last good state" in readyz(kube)[1]
        assert metric(kube, "envsteer_kubernetes_watch_ok", {"resource": "services"}) == 0
        assert metric(kube, "envsteer_ready") == 0
        time.sleep(down_for)
        assert metric(kube, "envsteer_kubernetes_api_errors_total", {"resource": "services"}) >= 1
    finally:
        kube.api.up()
    check_loop(loop.result(), 2000, ["k8s/a-proj1"])
    _relabel_recovers(kube)


def test_api_garbage_under_traffic(kube):
    loop = kube.start_loop("k8s/c-proj1", "127.96.31.1", 80, count=1000, duration=6.0)
    errors0 = sum(metric(kube, "envsteer_kubernetes_api_errors_total", {"resource": r}) or 0
                  for r in RESOURCES)
    # every list and watch answered with 200 and a non-JSON body for a while
    kube.api.garbage(40)
    kube.api.break_streams()
    wait_until(lambda: sum(metric(kube, "envsteer_kubernetes_api_errors_total", {"resource": r}) or 0
                           for r in RESOURCES) > errors0, 20,
               what="API errors counted")
    check_loop(loop.result(), 1000, ["k8s/a-proj1"])
    _relabel_recovers(kube)
