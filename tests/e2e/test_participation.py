"""Participation (issue 17): only pods that take part run envsteer's programs.

The agent runs with its default participation ("selected"): a pod takes part when it carries
the env label or the label envsteer.io/enabled=true. Node "part" (--default-env dev):
    web    127.96.17.1:80 -> web-dev (dev), web-p1 (dev.proj1)
    plain  127.96.17.2:80 -> srv-plain (no label: a backend that takes no part)
    callers c-p1 (dev.proj1), c-on (envsteer.io/enabled=true), c-plain (no label)
"""
import ctypes
import json
import os
import re
import signal
import struct
import subprocess

import pytest

import fixtures
import harness
from harness import wait_until

NS = "part"
WEB = "127.96.17.1"
PLAIN = "127.96.17.2"
ENABLED = "envsteer.io/enabled"
k = fixtures.keyer(NS)


@pytest.fixture(scope="module")
def part(e2e_prerequisites):
    node = harness.Node("part", default_env="dev", participation=None)
    try:
        fixtures.populate(node, NS, services=[("web", WEB), ("plain", PLAIN)],
                          pods=[("web-dev", "127.1.17.1", "web", "dev"),
                                ("web-p1", "127.1.17.2", "web", "dev.proj1"),
                                ("srv-plain", "127.1.17.3", "plain", None),
                                ("c-p1", "127.1.17.11", "client", "dev.proj1"),
                                ("c-on", "127.1.17.12", "client", None, {"labels": {ENABLED: "true"}}),
                                ("c-plain", "127.1.17.13", "client", None)],
                          servers=("web-dev", "web-p1", "srv-plain"))
        node.start_agent()
        yield node
    finally:
        node.close()


def effective(cgroup_dir):
    """The programs that run for processes of cgroup_dir (its own and inherited)."""
    r = subprocess.run(["bpftool", "-j", "cgroup", "show", cgroup_dir, "effective"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    text = r.stdout.strip()
    return json.loads(text) if text else []


def with_programs(node):
    """Names of the node's pods whose cgroup has envsteer programs attached."""
    attached = node.attached_programs()
    return {p.name for p in node.pods.values() if p.cgroup_dir in attached}


TAKING_PART = {"web-dev", "web-p1", "c-p1", "c-on"}


def answer(node, caller, vip):
    r = node.request(k(caller), vip, 80)
    assert r["ok"], r
    return r["answer"]["pod"]


def refused(node, caller, vip):
    r = node.request(k(caller), vip, 80)
    return not r["ok"] and r["errno"] == "ECONNREFUSED"


def test_only_participants_carry_programs(part):
    assert with_programs(part) == TAKING_PART
    # nothing at the node's root, and nothing runs for a pod that takes no part
    assert part.cgroup_dir not in part.attached_programs()
    for name in ("c-plain", "srv-plain"):
        assert effective(part.pods[k(name)].cgroup_dir) == [], name
    progs = {p["name"] for p in effective(part.pods[k("c-p1")].cgroup_dir)}
    assert {"es_connect4", "es_connect6", "es_getpeername4_prog"} <= progs, progs
    assert fixtures.metric(part, "envsteer_pods_with_programs") == len(TAKING_PART)
    st = part.status_http()
    assert st["participation"]["mode"] == "selected", st["participation"]
    assert st["participation"]["pods_with_programs"] == len(TAKING_PART)


def test_participants_are_steered_and_others_are_not(part):
    assert answer(part, "c-p1", WEB) == k("web-p1")
    assert answer(part, "c-on", WEB) == k("web-dev")  # unlabelled: the default env
    # a backend that takes no part still serves callers that do
    assert answer(part, "c-p1", PLAIN) == k("srv-plain")
    # a caller that takes no part is not steered: nothing listens on the service address
    assert refused(part, "c-plain", WEB)
    # its own connects to pods work as without envsteer
    r = part.request(k("c-plain"), "127.1.17.2", 8080)
    assert r["ok"] and r["answer"]["pod"] == k("web-p1"), r


def test_relabel_into_and_out_of_participation(part):
    part.set_labels(k("c-plain"), {ENABLED: "true"})
    try:
        wait_until(lambda: "c-plain" in with_programs(part), 10, what="programs on c-plain")
        wait_until(lambda: not refused(part, "c-plain", WEB), 10, what="c-plain steered")
        assert answer(part, "c-plain", WEB) == k("web-dev")
        # the env label alone makes a pod take part too (and picks its environment)
        part.set_labels(k("c-plain"), {ENABLED: None, part.env_label: "dev.proj1"})
        wait_until(lambda: answer(part, "c-plain", WEB) == k("web-p1"), 10, what="c-plain by its env")
        assert "c-plain" in with_programs(part)
    finally:
        part.set_labels(k("c-plain"), {ENABLED: None, part.env_label: None})
    wait_until(lambda: "c-plain" not in with_programs(part), 10, what="programs off c-plain")
    assert effective(part.pods[k("c-plain")].cgroup_dir) == []
    assert refused(part, "c-plain", WEB)
    assert with_programs(part) == TAKING_PART


NAMESPACE_DOC = """apiVersion: v1
kind: Namespace
metadata:
  name: part
  labels: {%s}
"""


def test_namespace_label_makes_all_its_pods_take_part(part):
    """A v1 Namespace in the manifests with envsteer.io/enabled=true: every pod of it takes
    part (--participation-namespace-selector's default); without the label, or without the
    Namespace, only the pods that take part by their own labels."""
    everyone = {p.name for p in part.pods.values()}
    assert everyone > TAKING_PART
    part.write_raw_manifest("namespace.yaml", NAMESPACE_DOC % ('"%s": "true"' % ENABLED))
    try:
        wait_until(lambda: with_programs(part) == everyone, 10, what="programs on every pod of the Namespace")
        wait_until(lambda: not refused(part, "c-plain", WEB), 10, what="c-plain steered")
        assert answer(part, "c-plain", WEB) == k("web-dev")  # unlabelled: the default env
        assert answer(part, "c-p1", WEB) == k("web-p1")
        part.write_raw_manifest("namespace.yaml", NAMESPACE_DOC % "team: shop")
        wait_until(lambda: with_programs(part) == TAKING_PART, 10, what="programs only on the pods' own choice")
        assert refused(part, "c-plain", WEB)
        part.write_raw_manifest("namespace.yaml", NAMESPACE_DOC % ('"%s": "true"' % ENABLED))
        wait_until(lambda: with_programs(part) == everyone, 10, what="programs on every pod again")
    finally:
        part.remove_raw_manifest("namespace.yaml")
    wait_until(lambda: with_programs(part) == TAKING_PART, 10, what="the Namespace's file removed")
    assert effective(part.pods[k("c-plain")].cgroup_dir) == []
    assert refused(part, "c-plain", WEB)


def tracing_links(node):
    return sorted(p for p in node.pins() if p in ("links/es_sock_recv_length", "links/es_sock_send_length"))


def parses_requests(node, name):
    return "es_http_ingress" in {p["name"] for p in effective(node.pods[k(name)].cgroup_dir)}


def test_thread_context_programs_only_while_a_pod_opts_in(part):
    """The global tp_btf programs serve only the thread context: no pod opts in, none runs."""
    if not harness.kernel_features()["request_context"]:
        assert tracing_links(part) == []
        return
    assert tracing_links(part) == []
    assert part.status_http()["participation"]["thread_context_programs"] is False
    # the request parse on arrival (cgroup_skb ingress) serves the thread context only:
    # no participating pod that does not opt in runs it
    assert not any(parses_requests(part, n) for n in TAKING_PART)
    pod = part.pods[k("web-p1")]
    pod.annotations["envsteer.io/thread-context"] = "on"
    part.write_manifests()
    try:
        wait_until(lambda: len(tracing_links(part)) == 2, 10, what="tracing links attached")
        ids = part.pinned_ids()
        assert all(ids[t][0] == "link" for t in tracing_links(part)), ids
        assert part.status_http()["participation"]["thread_context_programs"] is True
        wait_until(lambda: parses_requests(part, "web-p1"), 10, what="ingress on web-p1")
        assert [n for n in TAKING_PART if parses_requests(part, n)] == ["web-p1"]
        assert answer(part, "c-p1", WEB) == k("web-p1")
    finally:
        del pod.annotations["envsteer.io/thread-context"]
        part.write_manifests()
    wait_until(lambda: tracing_links(part) == [], 10, what="tracing links detached")
    # kept while the pod takes part: the state it keeps on the pod's sockets never goes stale
    assert parses_requests(part, "web-p1")


def pod_links(node):
    return {p: v for p, v in node.pinned_ids().items() if p.startswith("links/pods/")}


def test_agent_restart_adopts_the_pods_links(part):
    before = pod_links(part)
    assert len(before) >= len(TAKING_PART) * 8, before  # sock_addr programs at least
    assert all(v[0] == "link" for v in before.values()), before
    attached = part.attached_programs()
    assert part.stop_agent(signal.SIGTERM) == 0, part.agent_log_text()
    # no agent: the pods' programs keep steering
    assert answer(part, "c-p1", WEB) == k("web-p1")
    assert refused(part, "c-plain", WEB)
    part.start_agent()
    # the very same links (kernel ids), updated in place to the new agent's programs
    assert pod_links(part) == before
    assert part.attached_programs().keys() == attached.keys()
    assert answer(part, "c-p1", WEB) == k("web-p1")
    assert answer(part, "c-on", WEB) == k("web-dev")
    assert refused(part, "c-plain", WEB)
    m = re.search(r"(\d+) pod cgroup\(s\) adopted", part.agent_log_text())
    assert m and int(m.group(1)) == len(TAKING_PART), part.agent_log_text()


def test_removed_pod_loses_its_links_and_uninstall_removes_all(part):
    # (pods carry different numbers of links: the ingress program only where the thread
    # context is or was on)
    n0 = len(pod_links(part))
    part.add_pod(NS, "c-gone", "127.1.17.14", app="client", env="dev", write=True)
    wait_until(lambda: "c-gone" in with_programs(part), 10, what="programs on c-gone")
    n = len(pod_links(part))
    assert n > n0
    part.remove_pod(k("c-gone"))
    wait_until(lambda: len(pod_links(part)) == n0, 10, what="c-gone's links removed")
    assert part.stop_agent(signal.SIGTERM) == 0
    r = part.uninstall(check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert part.attached_programs() == {}
    assert part.pins() == []
    assert refused(part, "c-p1", WEB)


# --- an agent older than per-pod attachment left its links at the cgroup root

_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr + b"\0" * (128 - len(attr)))
    r = _libc.syscall(321, cmd, buf, 128)  # x86-64 bpf(2)
    if r < 0:
        raise OSError(ctypes.get_errno(), "bpf(%d)" % cmd)
    return r


def pin_root_link(node, prog_id, attach_type, name):
    """What an older agent pinned: a cgroup link of prog_id at the node's root, pinned as
    links/<name> (BPF_PROG_GET_FD_BY_ID, BPF_LINK_CREATE, BPF_OBJ_PIN)."""
    pfd = _bpf(13, struct.pack("<III", prog_id, 0, 0))
    cfd = os.open(node.cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        lfd = _bpf(28, struct.pack("<IIII", pfd, cfd, attach_type, 0))
        try:
            path = ctypes.create_string_buffer(os.path.join(node.pin_dir, "links", name).encode())
            _bpf(6, struct.pack("<QII", ctypes.addressof(path), lfd, 0))
        finally:
            os.close(lfd)
    finally:
        os.close(pfd)
        os.close(cfd)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the bpf(2) syscall number is x86-64's")
def test_root_links_of_an_older_agent_go_once_pods_have_their_own(make_node):
    node = make_node("partup", default_env="dev", participation=None)
    fixtures.populate(node, NS, services=[("web", WEB)],
                      pods=[("web-p1", "127.1.18.2", "web", "dev.proj1"),
                            ("c-p1", "127.1.18.11", "client", "dev.proj1")], servers=("web-p1",))
    node.start_agent()
    pin = [p for p in pod_links(node) if p.endswith("/es_connect4")][0]
    r = subprocess.run(["bpftool", "-j", "link", "show", "pinned", os.path.join(node.pin_dir, pin)],
                       capture_output=True, text=True, timeout=10)
    prog_id = json.loads(r.stdout)["prog_id"]
    assert node.stop_agent(signal.SIGTERM) == 0
    pin_root_link(node, prog_id, 10, "es_connect4")  # BPF_CGROUP_INET4_CONNECT
    assert [p["name"] for p in node.attached_programs()[node.cgroup_dir]] == ["es_connect4"]
    loop = node.start_loop(k("c-p1"), WEB, 80, count=500, duration=4.0)
    node.start_agent()
    res = loop.result()
    assert res["failures"] == 0 and res["pods"] == {k("web-p1"): 500}, res
    # the pods have their own: the root link is gone, pin and attachment
    assert node.cgroup_dir not in node.attached_programs()
    assert not os.path.exists(os.path.join(node.pin_dir, "links", "es_connect4"))
    assert "removed 1 cgroup link(s) at the cgroup root" in node.agent_log_text()
    assert answer(node, "c-p1", WEB) == k("web-p1")
