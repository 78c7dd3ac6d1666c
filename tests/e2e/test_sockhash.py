"""Sockets of steered connections sit in envsteer's sockhash (for outbound header
insertion). Public reports say sockhash membership broke ioctl(FIONREAD) on some 6.x
kernels: check that FIONREAD, poll, epoll and close behave as on a plain socket, with the
header programs on and off."""
import json
import os

import pytest

import harness

NS = "sh"
VIP = "127.96.7.1"
HERE = os.path.dirname(os.path.abspath(__file__))


def run_check(node):
    r = node.run_in_pod(NS + "/client", [harness.PYTHON, os.path.join(HERE, "sockcheck.py"),
                                         "%s:80" % VIP], timeout=20)
    assert r.returncode == 0, r
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("header_context", [True, False], ids=["header-programs", "no-header-context"])
def test_fionread_poll_epoll_close_on_steered_socket(make_node, header_context):
    node = make_node("sockhash", default_env="dev")
    node.add_service(NS, "web", VIP, 80, 8080)
    node.add_pod(NS, "web-dev", "127.1.7.1", app="web", env="dev")
    node.add_pod(NS, "client", "127.1.7.9", app="client", env="dev")
    node.write_manifests()
    node.start_server(NS + "/web-dev")
    node.start_agent([] if header_context else ["--no-header-context"])
    res = run_check(node)
    assert res["poll_idle"] == 0 and res["epoll_idle"] == 0, res
    assert res["poll_ready"] == 1 and res["epoll_ready"] == 1, res
    assert res["status_line"].startswith("HTTP/1."), res
    # FIONREAD reports what recv() then returns (the whole response had arrived)
    assert res["fionread"] == res["received"] > 0, res
    assert res["peername"] == "%s:80" % VIP, res
    assert res["closed"], res
