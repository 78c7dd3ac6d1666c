"""pytest set-up for the envsteer end-to-end tests.

These tests need root, cgroup v2 and bpffs, and the built agent ($ENVSTEER_BIN, default
<repo>/build/envsteer). They never skip: a missing prerequisite is a test error with a
clear message, because CI runs them as root on the real kernel. The one exception is a
test marked @pytest.mark.kernel_feature("request_context") on a kernel where the agent's
own probe reports that feature absent (e.g. 6.1, see docs/kernel-matrix.md): it is
skipped with the agent's reason. Where the probe reports it, the test runs.
"""
import os
import sys
import warnings

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def _prerequisite_problem():
    if os.geteuid() != 0:
        return ("the envsteer e2e tests must run as root (they create cgroups, mount bpffs "
                "and load BPF programs); run them with sudo / as root")
    try:
        harness.cgroup2_mount()
    except harness.HarnessError as e:
        return str(e)
    try:
        harness.ensure_bpffs()
    except Exception as e:  # noqa: BLE001
        return "cannot mount bpffs at /sys/fs/bpf: %s" % e
    b = harness.agent_bin()
    if not os.access(b, os.X_OK):
        return ("envsteer binary %s not found or not executable: build it "
                "(cmake -S . -B build -G Ninja && ninja -C build) or set ENVSTEER_BIN" % b)
    return None


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "kernel_feature(name): needs this kernel feature of `envsteer status "
        "--json` (\"kernel\"); skipped with the agent's reason where it is absent")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    for m in item.iter_markers("kernel_feature"):
        k = harness.kernel_features()
        if not k.get(m.args[0]):
            pytest.skip("kernel %s: no %s (%s)" % (k.get("release"), m.args[0],
                                                   "; ".join(k.get("notes") or [])))


@pytest.fixture(scope="session", autouse=True)
def e2e_prerequisites():
    problem = _prerequisite_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    stale = harness.sweep_stale()
    if stale:
        sys.stderr.write("e2e: removed leftovers of an earlier killed run: %s\n" % stale)
    yield


def _close_node(node):
    node.close()
    if node.cleanup_problems:
        warnings.warn("node %s cleanup problems: %s" % (node.name, node.cleanup_problems))


@pytest.fixture
def make_node(e2e_prerequisites):
    """Factory: make_node(name, **Node kwargs); every node is closed after the test."""
    nodes = []

    def make(name, **kw):
        n = harness.Node(name, **kw)
        nodes.append(n)
        return n

    yield make
    for n in reversed(nodes):
        _close_node(n)


@pytest.fixture
def node(make_node):
    """A fresh node named after nothing in particular, with --default-env dev."""
    return make_node("t", default_env="dev")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when in ("setup", "call"):
        for n in list(harness._LIVE_NODES):
            rep.sections.append(("envsteer node %s logs" % n.name, n.logs()))
