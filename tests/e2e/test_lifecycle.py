"""Agent life cycle: restart under load, adoption of pinned state, uninstall, bad manifests.

Module node "life" (--default-env dev, manifests written as one `kind: List`):
    s  127.96.2.1:80 -> s-dev (dev), s-proj1 (dev.proj1)
    callers c-dev (dev), c-proj1 (dev.proj1)
Tests that need a pristine agent (uninstall, --cleanup-on-exit, start-up errors, flags) make
their own node.
"""
import collections
import os
import re
import signal
import subprocess
import time

import pytest

import fixtures
import harness
from harness import backend_pods, frontend, wait_until

NS = "shop"
VIP = "127.96.2.1"
PORT = 80
TP = 8080
S = "127.96.2.1:80"


k = fixtures.keyer(NS)


def populate(node, base="127.1.2"):
    fixtures.populate(node, NS, services=[("s", VIP, {"port": PORT, "target_port": TP})],
                      # s-dev opts into the thread context: the tracing links exist only then
                      pods=[("s-dev", base + ".1", "s", "dev", {"annotations": {"envsteer.io/thread-context": "on"}}),
                            ("s-proj1", base + ".2", "s", "dev.proj1"),
                            ("c-dev", base + ".101", "client", "dev"),
                            ("c-proj1", base + ".102", "client", "dev.proj1")],
                      servers=("s-dev", "s-proj1"), port=TP)


@pytest.fixture(scope="module")
def life(e2e_prerequisites):
    node = harness.Node("life", default_env="dev", manifest_style="list")
    try:
        populate(node)
        node.start_agent()
        yield node
    finally:
        node.close()


@pytest.fixture
def running(life):
    """The module node with an agent running and the initial state in force."""
    if not life.agent_running():
        life.start_agent()
    yield life
    if not life.agent_running():
        life.start_agent()


def attach_types(node):
    """Multiset of (cgroup dir, attach type) attached in the node's subtree."""
    c = collections.Counter()
    for d, progs in node.attached_programs().items():
        for p in progs:
            c[(d, p.get("attach_type") if isinstance(p, dict) else str(p))] += 1
    return c


def resolved(node, frm, env_wanted, pods_wanted, timeout=10.0):
    return node.wait_explain(
        frm, k("s"), lambda ex: (frontend(ex, S).get("resolved_env") == env_wanted
                                 and backend_pods(frontend(ex, S)) == pods_wanted),
        timeout=timeout)


def assert_steered(node, caller, pod, n=3):
    for _ in range(n):
        r = node.request(k(caller), VIP, PORT)
        assert r["ok"] and r["answer"]["pod"] == k(pod), r


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_restart_under_connect_loop_loses_nothing(running, sig):
    node = running
    before = attach_types(node)
    assert before, "no program attached in %s" % node.cgroup_dir
    pinned_before = node.pinned_ids()
    # paced over 10 s: it must outlive the restart, and a new agent takes seconds to load its
    # programs when other test files run beside this one (ctest -j) on a busy machine
    loop = node.start_loop(k("c-proj1"), VIP, PORT, count=3000, duration=10.0)
    time.sleep(1.0)
    rc = node.stop_agent(sig)
    if sig == signal.SIGTERM:
        assert rc == 0, "agent exit code on SIGTERM: %s\n%s" % (rc, node.agent_log_text())
    time.sleep(0.3)  # no agent at all for a while
    node.start_agent()
    assert loop.proc.poll() is None, "the loop ended before the new agent was ready"
    res = loop.result()
    assert res["attempts"] == 3000, res
    assert res["failures"] == 0, res
    assert res["pods"] == {k("s-proj1"): 3000}, res
    # the new agent adopted the pinned state: same attachments (nothing duplicated or lost)
    # and the very same pinned maps and links (same kernel ids: adopted, not re-created)
    assert attach_types(node) == before
    assert any(v[0] == "map" for v in pinned_before.values()), pinned_before
    assert any(v[0] == "link" for v in pinned_before.values()), pinned_before
    # Tracing links (tp_btf) cannot be updated in place: the agent attaches the new
    # program and swaps the pin, so that one link gets a new id; all else is adopted.
    # Without the request context (kernel < 6.3) there is no tracing link at all.
    after = node.pinned_ids()
    tracing = ("links/es_sock_recv_length", "links/es_sock_send_length")
    for t in tracing:
        if harness.kernel_features()["request_context"]:
            assert t in pinned_before and t in after
            assert after[t][0] == "link"
        else:
            assert t not in pinned_before and t not in after
    assert {k_: v for k_, v in after.items() if k_ not in tracing} == \
        {k_: v for k_, v in pinned_before.items() if k_ not in tracing}
    resolved(node, k("c-proj1"), "dev.proj1", [k("s-proj1")], timeout=5)
    resolved(node, k("c-dev"), "dev", [k("s-dev")], timeout=5)
    assert_steered(node, "c-dev", "s-dev")


def test_traffic_keeps_flowing_while_agent_is_down(running):
    node = running
    before = attach_types(node)
    assert node.stop_agent(signal.SIGTERM) == 0, node.agent_log_text()
    assert attach_types(node) == before  # programs stay attached without --cleanup-on-exit
    assert node.pins(), "pins removed by a plain SIGTERM"
    assert_steered(node, "c-proj1", "s-proj1")
    assert_steered(node, "c-dev", "s-dev")
    r = node.udp(k("c-proj1"), VIP, PORT)
    assert r["ok"] and r["answer"] == k("s-proj1") and r["from"] == S, r


def test_restart_reconciles_changes_made_while_down(running):
    node = running
    node.stop_agent(signal.SIGTERM)
    try:
        node.set_ready(k("s-proj1"), False)
        node.start_agent()
        resolved(node, k("c-proj1"), "dev", [k("s-dev")])
        assert_steered(node, "c-proj1", "s-dev")
    finally:
        node.set_ready(k("s-proj1"), True)
    resolved(node, k("c-proj1"), "dev.proj1", [k("s-proj1")])
    assert_steered(node, "c-proj1", "s-proj1")


def _log_since(node, offset):
    return node.agent_log_text(limit=None)[offset:]


def _wait_log(node, offset, pattern, what):
    return wait_until(lambda: re.search(pattern, _log_since(node, offset)), 10, 0.1, what)


BAD_OBJECTS_AT_RUNTIME = [
    # (id, extra YAML document, (kind, key, reason) it is skipped with)
    ("duplicate-service-address", """apiVersion: v1
kind: Service
metadata:
  name: zdup
  namespace: shop
spec:
  clusterIP: 127.96.2.1
  ports:
  - port: 80
    protocol: TCP
    targetPort: 8080
  selector:
    app: s
""", ("Service", "shop/zdup", "address_in_use")),  # later than shop/s by key
    ("invalid-env-label", """apiVersion: v1
kind: Pod
metadata:
  name: badlabel
  namespace: shop
  labels:
    app: s
    virtual-env: "dev..x"
status:
  podIP: 127.1.2.9
  conditions:
  - type: Ready
    status: "True"
""", ("Pod", "shop/badlabel", "invalid_env")),
]


@pytest.mark.parametrize("doc,skip", [(d, p) for _, d, p in BAD_OBJECTS_AT_RUNTIME],
                         ids=[i for i, _, _ in BAD_OBJECTS_AT_RUNTIME])
def test_bad_object_while_running_is_skipped_and_the_rest_applies(running, doc, skip):
    """One change = a good edit (s-proj1 not ready) + a bad object: the good edit applies,
    the bad object is left out and listed (the sync is ok), until it is removed."""
    node = running
    resolved(node, k("c-proj1"), "dev.proj1", [k("s-proj1")])
    offset = len(node.agent_log_text(limit=None))
    try:
        node.set_ready(k("s-proj1"), False, write=False)
        node.extra_docs = [doc]
        node.write_manifests()
        resolved(node, k("c-proj1"), "dev", [k("s-dev")])
        assert_steered(node, "c-proj1", "s-dev")
        st = node.status_http()
        assert [(x["kind"], x["key"], x["reason"]) for x in st["skipped"]] == [skip], st["skipped"]
        assert st["sync"]["last_error"] == "", st["sync"]
        assert node.admin_get("/readyz")[0] == 200
        _wait_log(node, offset, r"skipped: %s %s:" % skip[:2], "the agent to log the skipped object")
        node.extra_docs = []
        node.write_manifests()
        wait_until(lambda: node.status_http()["skipped"] == [], 10, what="nothing skipped")
    finally:
        node.extra_docs = []
        node.set_ready(k("s-proj1"), True)
    resolved(node, k("c-proj1"), "dev.proj1", [k("s-proj1")])


BAD_AT_RUNTIME = [
    # (id, raw file text, regex the error line must match)
    ("malformed-yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n",
     r"cluster\.yaml"),  # the error names the file
]


@pytest.mark.parametrize("doc,pattern", [(d, p) for _, d, p in BAD_AT_RUNTIME],
                         ids=[i for i, _, _ in BAD_AT_RUNTIME])
def test_bad_manifest_while_running_keeps_last_good_state(running, doc, pattern):
    node = running
    resolved(node, k("c-proj1"), "dev.proj1", [k("s-proj1")])
    offset = len(node.agent_log_text(limit=None))
    try:
        # one change = a good edit (s-proj1 not ready) + a bad object: nothing may be applied
        node.set_ready(k("s-proj1"), False, write=False)
        node.extra_docs = [doc]
        node.write_manifests()
        _wait_log(node, offset, pattern, "the agent to log the bad manifest")
        time.sleep(0.5)
        assert node.agent_running(), node.agent_log_text()
        ex = node.explain(k("c-proj1"), k("s"))
        assert frontend(ex, S)["resolved_env"] == "dev.proj1", (
            "half a change was applied: %s\nlog:\n%s" % (ex, _log_since(node, offset)))
        assert_steered(node, "c-proj1", "s-proj1")
        # fixed manifest: the good edit now applies
        node.extra_docs = []
        node.write_manifests()
        resolved(node, k("c-proj1"), "dev", [k("s-dev")])
        assert_steered(node, "c-proj1", "s-dev")
    finally:
        node.extra_docs = []
        node.set_ready(k("s-proj1"), True)
    resolved(node, k("c-proj1"), "dev.proj1", [k("s-proj1")])


def test_bad_manifest_file_beside_good_one_while_running(running):
    node = running
    offset = len(node.agent_log_text(limit=None))
    try:
        node.write_raw_manifest("zz-broken.yaml", "kind: Service\nmetadata: [\n")
        _wait_log(node, offset, r"zz-broken\.yaml", "the agent to log the broken file")
        assert node.agent_running()
        assert_steered(node, "c-proj1", "s-proj1")
    finally:
        node.remove_raw_manifest("zz-broken.yaml")


# A file that cannot be read as objects stops the start-up. (Objects that read fine but are
# invalid, e.g. an env label that is no env name or a Service on a taken address, are
# skipped and reported instead: test_faults.py test_bad_objects_at_startup_...)
STARTUP_CASES = [
    # (id, extra document, regexes the start-up error must match: object, field)
    ("service-clusterIP", """apiVersion: v1
kind: Service
metadata:
  name: bad-svc
  namespace: shop
spec:
  clusterIP: not-an-ip
  ports:
  - port: 80
    targetPort: 8080
  selector:
    app: s
""", [r"bad-svc", r"clusterIP"]),
    ("service-port", """apiVersion: v1
kind: Service
metadata:
  name: bad-port
  namespace: shop
spec:
  clusterIP: 127.96.3.9
  ports:
  - port: 70000
    targetPort: 8080
  selector:
    app: s
""", [r"bad-port", r"port"]),
    ("unknown-kind", """apiVersion: v1
kind: Frobnicator
metadata:
  name: frob
  namespace: shop
""", [r"Frobnicator|frob", r"(?i)kind"]),
    ("malformed-yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: [x\n",
     [r"(?i)yaml|parse", r"cluster\.yaml|line"]),
]


@pytest.mark.parametrize("doc,patterns", [(d, p) for _, d, p in STARTUP_CASES],
                         ids=[i for i, _, _ in STARTUP_CASES])
def test_bad_manifest_at_startup_exits_nonzero_naming_object_and_field(make_node, doc,
                                                                       patterns):
    node = make_node("badstart", default_env="dev")
    node.add_service(NS, "s", "127.96.3.1", PORT, TP)
    node.add_pod(NS, "s-dev", "127.1.3.1", app="s", env="dev", port=TP)
    node.extra_docs = [doc]
    node.write_manifests()
    rc, log = node.run_agent_expect_exit()
    assert rc != 0, log
    for p in patterns:
        assert re.search(p, log), "start-up error does not match %r:\n%s" % (p, log)


def test_bad_manifest_at_startup_pins_and_attaches_nothing(make_node):
    """The programs load while the manifests are read; a file that cannot be read still
    stops the agent before it pins, writes or attaches anything."""
    node = make_node("badnopin", default_env="dev")
    node.add_service(NS, "s", "127.96.3.1", PORT, TP)
    node.add_pod(NS, "s-dev", "127.1.3.1", app="s", env="dev", port=TP)
    node.extra_docs = [STARTUP_CASES[-1][1]]  # malformed YAML
    node.write_manifests()
    assert node.pins() == []
    rc, log = node.run_agent_expect_exit()
    assert rc != 0, log
    assert re.search(r"(?i)yaml|parse", log), log
    assert node.pins() == [], "a failed start-up left pins: %s\n%s" % (node.pins(), log)
    assert node.attached_programs() == {}, log


def test_bad_manifest_at_restart_keeps_the_pinned_state(make_node):
    """A restart with a manifest that cannot be read: the new agent exits and the
    previous agent's maps and links (same kernel objects) keep steering."""
    node = make_node("badrestart", default_env="dev")
    populate(node, base="127.1.8")
    node.start_agent()
    assert_steered(node, "c-proj1", "s-proj1", n=1)
    assert node.stop_agent(signal.SIGTERM) == 0
    before = node.pinned_ids()
    assert any(kind == "map" for kind, _ in before.values()) and \
        any(kind == "link" for kind, _ in before.values()), before
    node.extra_docs = [STARTUP_CASES[-1][1]]
    node.write_manifests()
    rc, log = node.run_agent_expect_exit()
    assert rc != 0, log
    assert node.pinned_ids() == before, log
    assert_steered(node, "c-proj1", "s-proj1")
    node.extra_docs = []
    node.write_manifests()
    node.start_agent()
    assert_steered(node, "c-proj1", "s-proj1")


def test_failed_program_load_at_startup_exits_and_changes_nothing(make_node):
    """The program load (on its own thread, beside the read) fails: here a pinned map of
    another layout. The agent exits naming it, pins and attaches nothing else."""
    node = make_node("badload", default_env="dev")
    node.add_service(NS, "s", "127.96.3.1", PORT, TP)
    node.add_pod(NS, "s-dev", "127.1.3.1", app="s", env="dev", port=TP)
    node.write_manifests()
    bogus = os.path.join(node.pin_dir, "maps", "es_frontends")
    os.makedirs(os.path.dirname(bogus))
    subprocess.run(["bpftool", "map", "create", bogus, "type", "hash", "key", "4", "value", "4",
                    "entries", "8", "name", "es_frontends"], check=True, timeout=10)
    before = node.pinned_ids()
    assert list(before) == ["maps/es_frontends"], before
    rc, log = node.run_agent_expect_exit()
    assert rc != 0, log
    assert "incompatible envsteer version" in log and bogus in log, log
    assert node.pinned_ids() == before, log
    assert node.attached_programs() == {}, log


def test_second_agent_on_the_same_pin_directory_refuses(running):
    """One agent per pin directory: a second one exits with a clear message and changes
    nothing (the first keeps steering)."""
    before = running.pinned_ids()
    first, first_log = running.agent, running.agent_log
    rc, log = running.run_agent_expect_exit()
    running.agent, running.agent_log = first, first_log
    assert rc != 0, log
    assert "another envsteer agent is running on pin directory" in log, log
    assert running.agent_running()
    assert running.pinned_ids() == before
    assert running.admin_get("/readyz")[0] == 200


def test_uninstall_detaches_everything_and_removes_pins(make_node):
    node = make_node("uninst", default_env="dev")
    populate(node, base="127.1.4")
    node.start_agent()
    assert node.attached_programs(), "nothing attached"
    assert node.pins(), "nothing pinned"
    assert_steered(node, "c-proj1", "s-proj1", n=1)
    assert node.stop_agent(signal.SIGTERM) == 0
    r = node.uninstall(check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert node.attached_programs() == {}
    assert node.pins() == []
    # nothing steers any more: nothing listens on the service address
    r = node.request(k("c-proj1"), VIP, PORT)
    assert not r["ok"] and r["errno"] == "ECONNREFUSED", r


def test_cleanup_on_exit(make_node):
    node = make_node("cleanexit", default_env="dev")
    populate(node, base="127.1.5")
    node.start_agent(["--cleanup-on-exit"])
    assert node.attached_programs() and node.pins()
    assert_steered(node, "c-proj1", "s-proj1", n=1)
    assert node.stop_agent(signal.SIGTERM) == 0, node.agent_log_text()
    assert node.attached_programs() == {}
    assert node.pins() == []
    r = node.request(k("c-proj1"), VIP, PORT)
    assert not r["ok"] and r["errno"] == "ECONNREFUSED", r


def test_env_label_and_splitter_flags(make_node):
    node = make_node("flags", default_env="dev", env_label="team-env", splitter="_")
    node.add_service(NS, "s", VIP, PORT, TP)
    node.add_pod(NS, "s-dev", "127.1.6.1", app="s", env="dev", port=TP)
    node.add_pod(NS, "s-p1", "127.1.6.2", app="s", env="dev_p1", port=TP)
    node.add_pod(NS, "c-bob", "127.1.6.101", app="client", env="dev_p1_bob", port=TP)
    # carries the default label name only: for this agent it is unlabelled -> dev
    node.add_pod(NS, "c-other", "127.1.6.102", app="client",
                 labels={"virtual-env": "dev_p1"}, port=TP)
    node.write_manifests()
    node.start_server(k("s-dev"))
    node.start_server(k("s-p1"))
    node.start_agent()
    assert_steered(node, "c-bob", "s-p1")
    assert_steered(node, "c-other", "s-dev")
    ex = node.explain(k("c-bob"), k("s"))
    fe = frontend(ex, S)
    assert [w["env"] for w in fe["walk"]][:2] == ["dev_p1_bob", "dev_p1"], ex
    assert fe["resolved_env"] == "dev_p1", ex


def test_without_default_env_unlabelled_pods_are_the_base(make_node):
    node = make_node("nodefault")  # no --default-env
    fixtures.populate(node, NS,
                      services=[("s", VIP, {"port": PORT, "target_port": TP}),
                                ("t", "127.96.7.2", {"port": PORT, "target_port": TP})],
                      pods=[("s-base", "127.1.7.1", "s", None),  # no env label
                            ("s-dev", "127.1.7.2", "s", "dev"), ("t-dev", "127.1.7.3", "t", "dev"),
                            ("c-base", "127.1.7.101", "client", None),
                            ("c-devx", "127.1.7.102", "client", "dev.x"),
                            ("c-prod", "127.1.7.103", "client", "prod")],
                      servers=("s-base", "s-dev", "t-dev"), port=TP)
    node.start_agent()
    assert_steered(node, "c-base", "s-base", n=1)
    assert_steered(node, "c-devx", "s-dev", n=1)
    assert_steered(node, "c-prod", "s-base", n=1)  # nothing on prod's chain -> the base
    ex = node.explain(k("c-prod"), k("s"))
    fe = frontend(ex, S)
    assert fe["outcome"] == "default" and backend_pods(fe) == [k("s-base")], ex
    # t has no base pod: only dev's chain reaches it
    r = node.request(k("c-prod"), "127.96.7.2", PORT)
    assert not r["ok"] and r["errno"] == "ECONNREFUSED", r
    r = node.request(k("c-base"), "127.96.7.2", PORT)
    assert not r["ok"] and r["errno"] == "ECONNREFUSED", r
    r = node.request(k("c-devx"), "127.96.7.2", PORT)
    assert r["ok"] and r["answer"]["pod"] == k("t-dev"), r


def test_json_logs(make_node):
    """--log-format json: one JSON object per line, also for messages with quotes."""
    import json
    node = make_node("jsonlog", default_env="dev")
    node.add_service("j", "web", "127.96.9.1", 80, 8080)
    node.add_pod("j", "web-dev", "127.1.9.1", app="web", env="dev")
    node.write_manifests()
    node.start_agent(["--log-format", "json"])
    node.stop_agent()
    lines = [l for l in node.agent_log_text().splitlines()[1:] if l.strip()]
    assert len(lines) >= 4, lines
    records = [json.loads(l) for l in lines]
    assert all(set(r) == {"time", "level", "msg"} for r in records), records
    assert any(r["msg"].startswith("ready:") for r in records), records
