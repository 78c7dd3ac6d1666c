"""`envsteer run --kubernetes` against a loopback API server (fakeapi.py: real list/watch
protocol over TLS with a bearer token). Pods are processes in cgroups laid out like kubelet's
systemd driver (kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice) below the
node's cgroup root; the agent finds them from the pods' UIDs (no annotation). Steering follows
every API event."""
import os
import shutil
import time
import uuid

import pytest

import fixtures
import harness
from harness import wait_until
import fakeapi

NS = "k8s"
NODE = "node-1"
VIP = "127.96.31.1"


k = fixtures.keyer(NS)


class KubeNode(harness.Node):
    """A harness node whose agent follows the API server instead of manifests."""

    def __init__(self, name, api, kubeconfig, pass_env_label=True, **kw):
        super().__init__(name, **kw)
        self.pass_env_label = pass_env_label
        self.api = api
        self.kubeconfig = kubeconfig
        self.uids = {}

    def agent_cmd(self, extra_args=(), port=None):
        cmd = super().agent_cmd(extra_args, port)
        if not self.pass_env_label and "--env-label" in cmd:
            j = cmd.index("--env-label")
            cmd = cmd[:j] + cmd[j + 2:]
        i = cmd.index("--manifests")
        return cmd[:i] + ["--kubernetes", "--kubeconfig", self.kubeconfig, "--node-name", NODE] + cmd[i + 2:]

    def kube_pod(self, name, ip, env=None, app=None, qos="BestEffort", ready=True):
        """A pod on this node: a harness pod whose cgroup sits where kubelet puts it, and
        the same pod in the API (no envsteer annotation)."""
        pod = self.add_pod(NS, name, ip, env=env, app=app)
        uid = str(uuid.uuid4())
        self.uids[name] = uid
        q, u = qos.lower(), uid.replace("-", "_")
        if q == "guaranteed":  # one level up, like kubelet's systemd driver
            rel = os.path.join("kubepods.slice", "kubepods-pod%s.slice" % u)
        else:
            rel = os.path.join("kubepods.slice", "kubepods-%s.slice" % q, "kubepods-%s-pod%s.slice" % (q, u))
        os.rmdir(pod.cgroup_dir)
        pod.cgroup_dir = os.path.join(self.cgroup_dir, rel)
        os.makedirs(pod.cgroup_dir)
        labels = dict(pod.labels)
        self.api.create(fakeapi.make_pod(NS, name, ip, labels, NODE, ready=ready, uid=uid, qos=qos))
        return pod

    def populate(self, server_script=None):
        """Service a with a-dev and a-proj1 serving, clients c-dev and c-proj1: pods of every
        QoS class layout."""
        self.api.create(fakeapi.make_service(NS, "a", VIP, [("http", 80, 8080)], selector={"app": "a"}))
        self.kube_pod("a-dev", "127.1.31.1", env="dev", app="a")
        self.kube_pod("a-proj1", "127.1.31.2", env="dev.proj1", app="a", qos="Burstable")
        self.kube_pod("c-dev", "127.1.31.11", env="dev", app="c")
        self.kube_pod("c-proj1", "127.1.31.12", env="dev.proj1", app="c", qos="Guaranteed")
        self.slice([("a-dev", True), ("a-proj1", True)])
        for p in ("a-dev", "a-proj1"):
            self.start_server(k(p), script=server_script)

    def slice(self, endpoints):
        """(Re)writes the EndpointSlice of service a: endpoints = [(pod name, ready)]."""
        eps = [(self.pods[k(n)].ips[0], r, n, NODE, self.uids.get(n)) for n, r in endpoints]
        obj = fakeapi.make_endpointslice(NS, "a-abcde", "a", eps, [("http", 8080)])
        if self.api.get("endpointslices", NS, "a-abcde") is None:
            self.api.create(obj)
        else:
            self.api.update(obj)


@pytest.fixture(scope="module")
def kube(e2e_prerequisites, tmp_path_factory):
    api = fakeapi.FakeAPI(bookmark_interval=1.0)
    api.start()
    d = tmp_path_factory.mktemp("kube")
    kubeconfig = api.write_kubeconfig(str(d / "kubeconfig"), auth="token-file")
    node = KubeNode("kube", api, kubeconfig, default_env="dev")
    try:
        node.populate()
        node.start_agent()
        yield node
    finally:
        node.close()
        api.stop()


metric = fixtures.metric


def answer(node, client):
    r = node.request(k(client), VIP, 80)
    return r["answer"]["pod"] if r.get("ok") else r.get("errno")


def eventually(node, client, want, timeout=10.0):
    wait_until(lambda: answer(node, client) == want, timeout,
               what="%s answered by %s" % (client, want))


def test_initial_sync_steers_by_env_with_kubelet_cgroups(kube):
    assert answer(kube, "c-dev") == k("a-dev")
    assert answer(kube, "c-proj1") == k("a-proj1")
    code, body = kube.socket_get("/v1/status", timeout=5)
    assert code == 200 and '"kind": "kubernetes"' in body, body


def test_relabel_and_readiness_follow_events(kube):
    obj = kube.api.get("pods", NS, "c-dev")
    obj["metadata"]["labels"]["virtual-env"] = "dev.proj1"
    kube.api.update(obj)
    eventually(kube, "c-dev", k("a-proj1"))
    obj["metadata"]["labels"]["virtual-env"] = "dev"
    kube.api.update(obj)
    eventually(kube, "c-dev", k("a-dev"))
    kube.slice([("a-dev", True), ("a-proj1", False)])
    eventually(kube, "c-proj1", k("a-dev"))
    kube.slice([("a-dev", True), ("a-proj1", True)])
    eventually(kube, "c-proj1", k("a-proj1"))
    # the agent's own share of these events, watch line read -> maps written, and by stage:
    # each stage of an event is a part of its whole
    lat = kube.status_http()["sync"]["event_latency"]
    assert lat["events"] >= 4 and lat["window"] >= 4, lat
    stages = lat["stages"]
    assert set(stages) == {"decode", "queue", "prepare", "lock", "model", "maps"}, lat
    for name, st in stages.items():
        assert 0 <= st["p50_ms"] <= st["p99_ms"] <= st["max_ms"] <= lat["max_ms"], (name, lat)


def test_service_deleted_and_recreated(kube):
    svc = kube.api.get("services", NS, "a")
    kube.api.delete("services", NS, "a")
    eventually(kube, "c-dev", "ECONNREFUSED")  # nothing listens on the ClusterIP itself
    svc["metadata"].pop("resourceVersion", None)
    svc["metadata"].pop("uid", None)
    kube.api.create(svc)
    eventually(kube, "c-dev", k("a-dev"))


def test_410_relist_and_broken_streams(kube):
    lists_before = len(kube.api.lists("pods"))
    # the streams break, a change happens, and the history is compacted before the agent
    # watches again (it backs off first): its resourceVersion is gone -> 410 -> re-list
    obj = kube.api.get("pods", NS, "c-proj1")
    obj["metadata"]["labels"]["virtual-env"] = "dev"
    kube.api.break_streams()
    kube.api.update(obj)
    kube.api.compact()
    eventually(kube, "c-proj1", k("a-dev"), timeout=20)
    assert len(kube.api.lists("pods")) > lists_before, "the agent re-listed after 410"
    obj["metadata"]["labels"]["virtual-env"] = "dev.proj1"
    kube.api.update(obj)
    eventually(kube, "c-proj1", k("a-proj1"), timeout=20)


def test_api_down_keeps_state_then_recovers(kube):
    kube.api.down()
    try:
        # readiness says so; traffic keeps its last good state
        wait_until(lambda: kube.admin_get("/readyz", timeout=2)[0] == 503, 30, what="readyz 503")
        code, metrics = kube.admin_get("/metrics", timeout=5)
        assert 'envsteer_kubernetes_watch_ok{resource="services"} 0' in metrics, metrics
        assert answer(kube, "c-proj1") == k("a-proj1")
        assert answer(kube, "c-dev") == k("a-dev")
    finally:
        kube.api.up()
    obj = kube.api.get("pods", NS, "c-dev")
    obj["metadata"]["labels"]["virtual-env"] = "dev.proj1"
    kube.api.update(obj)
    eventually(kube, "c-dev", k("a-proj1"), timeout=40)
    wait_until(lambda: kube.admin_get("/readyz", timeout=2)[0] == 200, 40, what="readyz 200")
    obj["metadata"]["labels"]["virtual-env"] = "dev"
    kube.api.update(obj)
    eventually(kube, "c-dev", k("a-dev"), timeout=20)


def test_token_rotation(kube):
    token_file = kube.kubeconfig + ".token"
    kube.api.rotate_token("rotated-token")
    with open(token_file + ".tmp", "w") as f:
        f.write("rotated-token")
    os.rename(token_file + ".tmp", token_file)
    kube.api.break_streams()
    obj = kube.api.get("pods", NS, "c-dev")
    obj["metadata"]["labels"]["virtual-env"] = "dev.proj1"
    kube.api.update(obj)
    eventually(kube, "c-dev", k("a-proj1"), timeout=40)
    obj["metadata"]["labels"]["virtual-env"] = "dev"
    kube.api.update(obj)
    eventually(kube, "c-dev", k("a-dev"), timeout=20)


def test_never_lists_or_watches_every_pod(kube):
    pods = kube.api.lists("pods") + kube.api.watch_requests("pods")
    assert pods, "pods were listed and watched"
    for r in pods:
        assert r.query.get("labelSelector") or r.query.get("fieldSelector"), (r.path, r.query)


def test_pod_added_before_its_cgroup_then_deleted(kube):
    """kubelet creates a pod's cgroup after the API has the pod: the agent learns of the
    cgroup from inotify. Deleting the pod un-manages it (its connects are no longer steered:
    nothing listens on the ClusterIP itself)."""
    pod = kube.add_pod(NS, "c-late", "127.1.31.13", env="dev.proj1", app="c")
    uid = str(uuid.uuid4())
    os.rmdir(pod.cgroup_dir)
    pod.cgroup_dir = os.path.join(kube.cgroup_dir, "kubepods.slice", "kubepods-burstable.slice",
                                  "kubepods-burstable-pod%s.slice" % uid.replace("-", "_"))
    kube.api.create(fakeapi.make_pod(NS, "c-late", "127.1.31.13", dict(pod.labels), NODE, uid=uid,
                                     qos="Burstable"))
    time.sleep(0.5)  # the agent has the pod, not its cgroup
    # not an error: a warning listed (structured) until the cgroup appears
    wait_until(lambda: {"pod": k("c-late"), "cgroup": ""} in kube.status_http()["model"]["missing_cgroups"], 10,
               what="c-late listed with its cgroup missing")
    assert metric(kube, "envsteer_pod_cgroups_missing") == 1
    assert metric(kube, "envsteer_last_sync_failed") == 0
    os.makedirs(pod.cgroup_dir)
    eventually(kube, "c-late", k("a-proj1"))
    assert kube.status_http()["model"]["missing_cgroups"] == []
    kube.api.delete("pods", NS, "c-late")
    eventually(kube, "c-late", "ECONNREFUSED")


def test_endpointslice_deleted_and_added(kube):
    kube.api.delete("endpointslices", NS, "a-abcde")
    eventually(kube, "c-dev", "ECONNREFUSED")  # no ready pod anywhere: refused
    kube.slice([("a-dev", True), ("a-proj1", True)])
    eventually(kube, "c-dev", k("a-dev"))
    eventually(kube, "c-proj1", k("a-proj1"))


def test_virtualenvironment_settings_apply_where_no_flag_is_given(e2e_prerequisites, tmp_path):
    """The prior art's VirtualEnvironment: its env label and default env are used (the
    agent runs without --env-label and --default-env)."""
    api = fakeapi.FakeAPI()
    api.start()
    try:
        api.create(fakeapi.make_virtualenv("envsteer", "ve", label="team-env", default_subset="base"))
        kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
        # the harness labels pods with "team-env"; the agent gets no --env-label
        node = KubeNode("kve", api, kubeconfig, pass_env_label=False, default_env=None,
                        env_label="team-env")
        try:
            api.create(fakeapi.make_service(NS, "a", VIP, [("http", 80, 8080)], selector={"app": "a"}))
            node.kube_pod("a-base", "127.1.32.1", app="a", env="base")
            node.kube_pod("a-t1", "127.1.32.2", app="a", env="base.t1")
            node.kube_pod("c-t1", "127.1.32.11", app="c", env="base.t1")
            node.kube_pod("c-none", "127.1.32.12", app="c")
            node.slice([("a-base", True), ("a-t1", True)])
            for p in ("a-base", "a-t1"):
                node.start_server(k(p))
            node.start_agent()
            assert answer(node, "c-t1") == k("a-t1")
            assert answer(node, "c-none") == k("a-base")  # unlabelled: defaultSubset
            assert "env-label = team-env" in node.agent_log_text()
            assert "--env-label" not in node.agent_log_text().splitlines()[0]
            # a change restarts the agent (DaemonSet/systemd start it again), pins keep steering
            ve = api.get("virtualenvironments", "envsteer", "ve")
            ve["spec"]["envLabel"]["defaultSubset"] = "base.t1"
            api.update(ve)
            wait_until(lambda: not node.agent_running(), 20, what="agent exit on VirtualEnvironment change")
            assert node.agent.returncode == 0
            assert "VirtualEnvironment envsteer/ve changed" in node.agent_log_text()
            assert answer(node, "c-t1") == k("a-t1")  # no agent: the pinned state steers
            node.agent = None
            node.start_agent()
            wait_until(lambda: answer(node, "c-none") == k("a-t1"), 10, what="new default env")
        finally:
            node.close()
    finally:
        api.stop()


def test_service_modified_port(kube):
    """A Service MODIFIED to serve on another port: the new address is steered, the old one
    no longer is."""
    svc = kube.api.get("services", NS, "a")
    svc["spec"]["ports"][0]["port"] = 8081
    kube.api.update(svc)

    def on(port):
        r = kube.request(k("c-proj1"), VIP, port)
        return r["answer"]["pod"] if r.get("ok") else r.get("errno")

    wait_until(lambda: on(8081) == k("a-proj1"), 10, what="new port steered")
    assert on(80) == "ECONNREFUSED"
    svc = kube.api.get("services", NS, "a")
    svc["spec"]["ports"][0]["port"] = 80
    kube.api.update(svc)
    wait_until(lambda: on(80) == k("a-proj1"), 10, what="port 80 again")


class InClusterNode(KubeNode):
    """The agent with the in-cluster configuration, as in a pod: KUBERNETES_SERVICE_HOST/PORT
    and the service-account directory at its standard path. That path is provided in a
    private mount namespace (a tmpfs over /run, the test's directory bound into it), so the
    host's /run is never touched."""

    def __init__(self, name, api, sa_dir, env, **kw):
        super().__init__(name, api, None, **kw)
        self.sa_dir = sa_dir
        self.env = env

    def agent_cmd(self, extra_args=(), port=None):
        cmd = super().agent_cmd(extra_args, port)
        i = cmd.index("--kubeconfig")
        cmd = cmd[:i] + cmd[i + 2:]
        sa = "/run/secrets/kubernetes.io/serviceaccount"
        script = ("mount --make-rprivate / && mount -t tmpfs tmpfs /run && mkdir -p %s && "
                  "mount --bind \"$0\" %s && shift && exec env KUBERNETES_SERVICE_HOST=%s "
                  "KUBERNETES_SERVICE_PORT=%s \"$@\"" % (sa, sa, self.env["KUBERNETES_SERVICE_HOST"],
                                                        self.env["KUBERNETES_SERVICE_PORT"]))
        return ["unshare", "-m", "sh", "-c", script, self.sa_dir, "_"] + cmd


def test_in_cluster_config_and_token_rotation(e2e_prerequisites, tmp_path):
    api = fakeapi.FakeAPI()
    api.start()
    try:
        sa_dir = str(tmp_path / "sa")
        env = api.write_incluster(sa_dir)
        node = InClusterNode("kic", api, sa_dir, env, default_env="dev")
        try:
            api.create(fakeapi.make_service(NS, "a", VIP, [("http", 80, 8080)], selector={"app": "a"}))
            node.kube_pod("a-dev", "127.1.33.1", app="a", env="dev")
            node.kube_pod("a-proj1", "127.1.33.2", app="a", env="dev.proj1")
            node.kube_pod("c-1", "127.1.33.11", app="c", env="dev")
            node.slice([("a-dev", True), ("a-proj1", True)])
            for p in ("a-dev", "a-proj1"):
                node.start_server(k(p))
            node.start_agent()
            assert "in-cluster service account" in node.agent_log_text()
            assert answer(node, "c-1") == k("a-dev")
            # kubelet rotates the projected token: the agent reads it again on its next request
            api.rotate_token("rotated-in-cluster")
            api.break_streams()
            obj = api.get("pods", NS, "c-1")
            obj["metadata"]["labels"]["virtual-env"] = "dev.proj1"
            api.update(obj)
            wait_until(lambda: answer(node, "c-1") == k("a-proj1"), 30, what="steered after rotation")
            assert any(r.auth_ok and r.headers.get("authorization") == "Bearer rotated-in-cluster"
                       for r in api.requests)
        finally:
            node.close()
    finally:
        api.stop()


def skipped(node):
    return {(x["kind"], x["key"], x["reason"]) for x in node.status_http()["skipped"]}


def test_bad_objects_in_any_namespace_freeze_nothing_and_are_reported(kube):
    """Labelled pods are watched cluster-wide: a pod in any namespace labelled `dev..x` (a
    legal label value) and a Service there on a taken address arrive together with a good
    change. The good change applies; the bad objects are skipped, listed, counted and
    reported as one Kubernetes Event each, however many syncs follow."""
    api = kube.api
    posts = lambda: [r for r in api.requests if r.method == "POST" and r.resource == "events"]
    posts_before = len(posts())
    offset = len(kube.agent_log_text(limit=None))
    bad = fakeapi.make_pod("other", "bad", "127.1.31.99", {"virtual-env": "dev..x", "app": "a"}, "node-9",
                           uid=str(uuid.uuid4()))
    dup = fakeapi.make_service("other", "dup", VIP, [("http", 80, 8080)], selector={"app": "a"})
    try:
        api.create(bad)
        api.create(dup)
        api.relabel("pods", NS, "c-dev", {"virtual-env": "dev.proj1"})
        eventually(kube, "c-dev", k("a-proj1"))
        want = {("Pod", "other/bad", "invalid_env"), ("Service", "other/dup", "address_in_use")}
        wait_until(lambda: skipped(kube) == want, 10, what="bad objects listed")
        assert kube.admin_get("/readyz", timeout=2)[0] == 200
        assert metric(kube, "envsteer_last_sync_failed") == 0
        assert metric(kube, "envsteer_objects_skipped", {"kind": "Pod", "reason": "invalid_env"}) == 1
        assert metric(kube, "envsteer_objects_skipped", {"kind": "Service", "reason": "address_in_use"}) == 1
        assert answer(kube, "c-proj1") == k("a-proj1")  # k8s/a keeps its address

        def events():
            return {(e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"]): e
                    for e in api.events("other")}
        wait_until(lambda: len(events()) == 2, 10, what="two Events")
        ev = events()
        pod_ev = ev[("Pod", "bad", "SkippedInvalidEnv")]
        assert pod_ev["type"] == "Warning" and "dev..x" in pod_ev["message"], pod_ev
        assert pod_ev["involvedObject"]["uid"] == bad["metadata"]["uid"], pod_ev
        assert pod_ev["involvedObject"]["fieldPath"] == "metadata.labels.virtual-env", pod_ev
        assert pod_ev["source"]["host"] == NODE, pod_ev
        svc_ev = ev[("Service", "dup", "SkippedAddressInUse")]
        assert "k8s/a" in svc_ev["message"], svc_ev
        assert metric(kube, "envsteer_kubernetes_events_total", {"result": "posted"}) >= 2
        # more syncs (events, SIGHUP): no more Events, one log line each
        api.relabel("pods", NS, "c-dev", {"virtual-env": "dev"})
        eventually(kube, "c-dev", k("a-dev"))
        kube.sighup_agent()
        time.sleep(1.0)
        assert len(posts()) - posts_before == 2, posts()
        log = kube.agent_log_text(limit=None)[offset:]
        assert log.count("skipped: Pod other/bad:") == 1, log
        assert log.count("skipped: Service other/dup:") == 1, log
    finally:
        for kind, name in (("pods", "bad"), ("services", "dup")):
            if api.get(kind, "other", name) is not None:
                api.delete(kind, "other", name)
        if api.get("pods", NS, "c-dev")["metadata"]["labels"].get("virtual-env") != "dev":
            api.relabel("pods", NS, "c-dev", {"virtual-env": "dev"})
    wait_until(lambda: skipped(kube) == set(), 10, what="nothing skipped once deleted")
    eventually(kube, "c-dev", k("a-dev"))


def test_events_are_best_effort(kube):
    """Without RBAC for Events the agent steers all the same and counts the failure."""
    api = kube.api
    api.forbid("events", ["create"])
    bad = fakeapi.make_pod("other", "bad2", "127.1.31.98", {"virtual-env": "a..b"}, "node-9")
    try:
        failed0 = metric(kube, "envsteer_kubernetes_events_total", {"result": "failed"})
        api.create(bad)
        wait_until(lambda: ("Pod", "other/bad2", "invalid_env") in skipped(kube), 10, what="bad2 skipped")
        wait_until(lambda: metric(kube, "envsteer_kubernetes_events_total", {"result": "failed"}) > failed0, 10,
                   what="the Event counted as failed")
        assert "needs create on events" in kube.agent_log_text(limit=None)
        assert kube.admin_get("/readyz", timeout=2)[0] == 200
        assert answer(kube, "c-proj1") == k("a-proj1")
    finally:
        api.allow("events", ["create"])
        if api.get("pods", "other", "bad2") is not None:
            api.delete("pods", "other", "bad2")
    wait_until(lambda: skipped(kube) == set(), 10, what="nothing skipped once deleted")


def test_cgroup_annotation_is_ignored_in_kubernetes_mode(kube):
    """--kubernetes: a pod's cgroup is what the agent finds under the kubelet's pod cgroups
    by the pod's UID, nothing else. An annotation claims neither another pod's cgroup nor a
    parent slice, and a pod of another node never becomes local."""
    api = kube.api
    ann = harness.CGROUP_ANNOTATION
    c_dev_rel = os.path.relpath(kube.pod(k("c-dev")).cgroup_dir, kube.cg_mount)
    slice_rel = os.path.relpath(os.path.join(kube.cgroup_dir, "kubepods.slice"), kube.cg_mount)
    stray = kube.make_cgroup(os.path.join("kubepods.slice", "stray"))  # no pod's cgroup
    try:
        # this node's pod, annotated with c-dev's cgroup
        kube.kube_pod("c-evil", "127.1.31.21", env="dev.proj1", app="c")
        api.mutate("pods", NS, "c-evil", lambda o: o["metadata"].setdefault("annotations", {}).update({ann: c_dev_rel}))
        # another node's pod, annotated with this node's kubepods slice
        api.create(fakeapi.make_pod(NS, "r-evil", "127.1.31.22", {"virtual-env": "dev.proj1", "app": "c"}, "node-9",
                                    annotations={ann: slice_rel}, uid=str(uuid.uuid4())))
        eventually(kube, "c-evil", k("a-proj1"))  # steered, from its own cgroup
        wait_until(lambda: any("c-evil" in w and "ignored" in w for w in kube.status_http()["model"]["warnings"]),
                   10, what="the ignored annotation warned about")
        assert answer(kube, "c-dev") == k("a-dev")  # its cgroup is still its own
        r = kube.client_in_cgroup(stray, "--to", "%s:80" % VIP, "--timeout", "3")
        assert not r.get("ok") and r.get("errno") == "ECONNREFUSED", r  # not managed: not steered
        assert kube.status_http()["skipped"] == []
        assert kube.admin_get("/readyz", timeout=2)[0] == 200
    finally:
        for name in ("c-evil", "r-evil"):
            if api.get("pods", NS, name) is not None:
                api.delete("pods", NS, name)


def test_namespace_label_makes_its_pods_take_part(e2e_prerequisites, tmp_path):
    """Default participation ("selected"): a pod without the env label takes part once its
    Namespace carries envsteer.io/enabled=true (the agent lists and watches Namespaces),
    and no longer when the label goes or the Namespace is deleted."""
    api = fakeapi.FakeAPI(bookmark_interval=1.0)
    api.start()
    kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"), auth="token-file")
    node = KubeNode("kubens", api, kubeconfig, default_env="dev", participation=None)
    vip = "127.96.32.1"
    enabled = "envsteer.io/enabled"

    def plain():
        r = node.request(k("c-plain"), vip, 80)
        return r["answer"]["pod"] if r.get("ok") else r.get("errno")

    def with_programs():
        return node.status_http()["participation"]["pods_with_programs"]

    try:
        api.create(fakeapi.make_namespace(NS, {"team": "shop"}))
        api.create(fakeapi.make_service(NS, "a", vip, [("http", 80, 8080)], selector={"app": "a"}))
        node.kube_pod("a-dev", "127.1.32.1", env="dev", app="a")
        node.kube_pod("c-plain", "127.1.32.11", app="c")
        eps = [(node.pods[k("a-dev")].ips[0], True, "a-dev", NODE, node.uids["a-dev"])]
        api.create(fakeapi.make_endpointslice(NS, "a-abcde", "a", eps, [("http", 8080)]))
        node.start_server(k("a-dev"))
        node.start_agent()
        st = node.status_http()["participation"]
        assert st["mode"] == "selected" and st["namespace_selector"] == "envsteer.io/enabled=true", st
        assert api.lists("namespaces"), "Namespaces are listed"
        assert plain() == "ECONNREFUSED"  # takes no part: not steered (nothing listens on the VIP)
        assert with_programs() == 1  # a-dev, by its env label
        api.relabel("namespaces", None, NS, {enabled: "true"})
        wait_until(lambda: plain() == k("a-dev"), 10, what="c-plain steered by its Namespace's label")
        assert with_programs() == 2
        api.relabel("namespaces", None, NS, {enabled: "false"})
        wait_until(lambda: plain() == "ECONNREFUSED", 10, what="c-plain no longer steered")
        assert with_programs() == 1
        api.relabel("namespaces", None, NS, {enabled: "true"})
        wait_until(lambda: plain() == k("a-dev"), 10, what="c-plain steered again")
        api.delete("namespaces", None, NS)
        wait_until(lambda: plain() == "ECONNREFUSED", 10, what="c-plain not steered without its Namespace")
        assert with_programs() == 1
    finally:
        node.close()
        api.stop()
