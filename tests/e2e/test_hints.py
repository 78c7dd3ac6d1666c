"""Connect hints (maps/abi.h es_hints): a client that opens one connection per request, each
tagged for another environment than its own, goes through the relay once; its pod's next
connections to the service are made to that environment's set at connect(), and every request
on them is still routed by its own header before a byte of it leaves.

Node: the topology of test_per_request.py (service s, pods s-dev / s-proj1 / s-proj2, client
c-dev in dev). kaserver's /close answers with "Connection: close" and closes: kaload's next
request then opens a new connection."""
import errno
import json
import os
import shutil
import subprocess

import pytest

import fixtures
import harness
from test_relay import _map, map_dump
from test_per_request import (EXPECT, JAVA_CLIENT, NODE_CLIENT, TO, build, check_one_connection, delta, k,
                              run_json, sequence)

COUNTS = ("req_slow_path", "req_rerouted_kernel", "req_passed", "req_failed", "connect_hinted",
          "hint_missed", "hint_refused")

# Runs in a pod: connects to the service, sends argv[2] (hex) in one send(), then reads what
# comes back for up to a second. Prints {"send_errno", "got", "peer"}.
RAW_SEND = r"""
import json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=5)
out = {"send_errno": 0, "got": ""}
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
except OSError as e:
    out["send_errno"] = e.errno
s.settimeout(1.0)
try:
    out["got"] = s.recv(4096).decode("latin-1")
except OSError as e:
    out["got"] = "error: %s" % e
print(json.dumps(out))
"""


def closes(*envs):
    """One request per connection: kaload entries whose answer closes the connection."""
    return [e + "@/close" for e in envs]


def raw_send(node, pod, payload):
    return run_json(node, pod, [harness.PYTHON, "-c", RAW_SEND, TO, payload.hex()])


def hint_from(node):
    """Leaves c-dev with a hint for dev.proj1 (one request through the relay)."""
    res = sequence(node, "c-dev", closes("dev.proj1"))
    assert [a["pod"] for a in res["answers"]] == ["pr/s-proj1"], res


def test_one_tagged_connection_per_request_goes_through_the_relay_once(make_node):
    node = build(make_node, "once")
    before = node.counters()
    envs = ["dev.proj1"] * 6
    res = sequence(node, "c-dev", closes(*envs))
    assert res["connects"] == 6, res
    assert [a["pod"] for a in res["answers"]] == ["pr/s-proj1"] * 6, res
    after = node.counters()
    # the first through the relay; the next five connected to s-proj1 by the hint, passed
    assert delta(before, after, *COUNTS) == (1, 0, 5, 0, 5, 0, 0), (before, after)
    st = node.status_http()
    assert st["settings"]["connect_hints"] is True, st["settings"]
    # the bound of the hints: an LRU map of 65 536 entries (a pod churn evicts, never grows it);
    # this pod has one entry
    info = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned", _map(node, "es_hints")],
                                     capture_output=True, text=True, timeout=30, check=True).stdout)
    assert (info["type"], info["max_entries"]) == ("lru_hash", 65536), info
    assert len(map_dump(node, "es_hints")) == 1
    # `envsteer explain` says where c-dev's next connect() goes and why: its own env (dev)
    # resolves to s-dev, the hint to s-proj1; c-plain has none
    fe = node.explain(k("c-dev"), k("s"))["frontends"][0]
    assert [b["pod"] for b in fe["backends"]] == ["pr/s-dev"], fe
    hint = fe.get("hint") or {}
    assert (hint.get("env"), hint.get("resolved_env")) == ("dev.proj1", "dev.proj1"), fe
    assert [b["pod"] for b in hint["backends"]] == ["pr/s-proj1"], fe
    assert "hint" not in node.explain(k("c-plain"), k("s"))["frontends"][0]
    text = node.cli("explain", "--from", k("c-dev"), "--to", k("s"), "--admin-socket", node.admin_socket)
    assert text.returncode == 0 and "hint: the relay last carried this pod's requests for dev.proj1" in text.stdout \
        and "pr/s-proj1" in text.stdout, text


def test_requests_on_a_hinted_connection_are_routed_by_their_own_header(make_node):
    node = build(make_node, "own")
    hint_from(node)
    before = node.counters()
    # one keep-alive connection, hinted to s-proj1: every request by its own environment, the
    # untagged one by c-dev's own (dev, auto-inject), never by the hint
    envs = ["dev.proj1", "-", "dev.proj2", "dev", "dev.proj1.alice", "dev.proj1"]
    res = sequence(node, "c-dev", envs)
    check_one_connection(res, envs)
    after = node.counters()
    assert delta(before, after, "connect_hinted", "hint_missed", "hint_refused", "req_failed") == \
        (1, 0, 0, 0), (before, after)
    # the first request of a connection the hint got wrong: re-routed, right, counted; the
    # relay's request moved the hint (dev.proj2 was the last relayed env)
    before = after
    res = sequence(node, "c-dev", closes("-", "-"))
    assert [a["pod"] for a in res["answers"]] == ["pr/s-dev", "pr/s-dev"], res
    after = node.counters()
    assert delta(before, after, "connect_hinted", "hint_missed", "req_slow_path", "req_failed") == \
        (1, 1, 1, 0), (before, after)


RAW = {"http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
       "tls-hello": bytes.fromhex("160301002e0100002a0303") + bytes(32),
       "head-too-long": b"GET / HTTP/1.1\r\nHost: s\r\nX-Virtual-Env: dev.proj1\r\nX-Pad: " + b"a" * 9000,
       # test_smuggling.py's unframed requests, tagged for the hint's own environment
       "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: dev.proj1\r\nX-Fold: a\r\n b\r\n\r\n",
       "cl-and-te": b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: dev.proj1\r\nContent-Length: 3\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       "bad-version": b"BREW / HTTP/3.0\r\nHost: x\r\nX-Virtual-Env: dev.proj1\r\n\r\n"}


@pytest.mark.parametrize("what", sorted(RAW))
def test_bytes_no_header_routes_never_reach_the_hinted_pod(make_node, what):
    """On a connection the hint made (to another environment's pod than the caller's), bytes
    whose environment cannot be read are refused before they leave (the send fails), counted,
    and the hint dropped: the next connection goes to the caller's own set."""
    node = build(make_node, "raw-" + what.split("-")[0])
    hint_from(node)
    before = node.counters()
    out = raw_send(node, "c-dev", RAW[what])
    assert out["send_errno"] == errno.EACCES and "s-proj1" not in out["got"], out
    after = node.counters()
    assert delta(before, after, "connect_hinted", "hint_refused") == (1, 1), (before, after)
    # without a hint: the same bytes go to the caller's own pod, as they always did
    before = after
    res = sequence(node, "c-dev", closes("-"))
    assert [a["pod"] for a in res["answers"]] == ["pr/s-dev"], res
    after = node.counters()
    assert delta(before, after, "connect_hinted", "hint_refused", "req_slow_path") == (0, 0, 0), (before, after)


def test_without_connect_hints_every_request_takes_the_relay(make_node):
    node = build(make_node, "off", ["--no-connect-hints"])
    before = node.counters()
    res = sequence(node, "c-dev", closes(*["dev.proj1"] * 4))
    assert [a["pod"] for a in res["answers"]] == ["pr/s-proj1"] * 4, res
    after = node.counters()
    assert delta(before, after, *COUNTS) == (4, 0, 0, 0, 0, 0, 0), (before, after)
    assert node.status_http()["settings"]["connect_hints"] is False


def test_hints_are_per_pod(make_node):
    """c-dev's hint is not c-plain's: c-plain's untagged requests go to its own (default dev)
    set at connect(), and its tagged ones through the relay the first time."""
    node = build(make_node, "perpod")
    hint_from(node)
    before = node.counters()
    res = sequence(node, "c-plain", closes("-", "dev.proj1", "dev.proj1"))
    assert [a["pod"] for a in res["answers"]] == ["pr/s-dev", "pr/s-proj1", "pr/s-proj1"], res
    after = node.counters()
    assert delta(before, after, "connect_hinted", "req_slow_path", "req_passed") == (1, 1, 2), (before, after)


# Python asyncio streams: a new connection per request.
ASYNCIO_CLIENT = r"""
import asyncio, json, sys
async def one(host, port, env):
    r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    w.write(("GET / HTTP/1.1\r\nHost: s\r\nX-Virtual-Env: %s\r\nConnection: close\r\n\r\n" % env).encode())
    await w.drain()
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0])
    body = await asyncio.wait_for(r.readexactly(n), 5)
    w.close()
    return json.loads(body)
async def main():
    host, port = sys.argv[1].split(":")
    print(json.dumps([await one(host, int(port), e) for e in sys.argv[2].split(",")]))
asyncio.run(main())
"""


# Go net/http without keep-alive: a new connection per request.
GO_CLIENT = r"""
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	out := []map[string]interface{}{}
	for _, env := range strings.Split(os.Args[2], ",") {
		req, _ := http.NewRequest("GET", "http://"+os.Args[1]+"/", nil)
		req.Header.Set("X-Virtual-Env", env)
		m := map[string]interface{}{}
		if r, err := c.Do(req); err != nil {
			m["error"] = err.Error()
		} else {
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			json.Unmarshal(b, &m)
		}
		out = append(out, m)
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}
"""


def go_client(node):
    """GO_CLIENT built on the host (the e2e cache of test_never_wrong.py's Go tier)."""
    from test_never_wrong import _build, _cache_dir, _need
    src, out = os.path.join(node.tmp, "oneshot.go"), os.path.join(node.tmp, "oneshot")
    with open(src, "w") as f:
        f.write(GO_CLIENT)
    cache = _cache_dir()
    env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", GOTOOLCHAIN="local", GO111MODULE="off",
               GOCACHE=os.path.join(cache, "go-build"), GOPATH=os.path.join(cache, "gopath"), CGO_ENABLED="0")
    _build([_need("go", "golang-go"), "build", "-o", out, src], env=env)
    return out


def test_real_clients_one_connection_per_request(make_node):
    """curl, Node (agent: false), Java (HttpURLConnection, /close), Python asyncio and Go (net/http
    without keep-alive), each opening a new connection per request, tags that change every few
    requests: every answer from the tag's own pod."""
    node = build(make_node, "real")
    envs = ["dev.proj1", "dev.proj1", "dev.proj2", "dev.proj2", "dev", "dev.proj1.alice", "dev.proj1"]
    before = node.counters()
    argv = [shutil.which("curl") or "curl", "-sS", "--max-time", "5"]
    for i, env in enumerate(envs):
        # kaserver's /close answers with "Connection: close" and closes the connection
        argv += (["--next"] if i else []) + ["-H", "X-Virtual-Env: " + env, "http://%s/close" % TO]
    r = node.run_in_pod(fixtures.keyer("pr")("c-dev"), argv, timeout=60)
    assert r.returncode == 0, r
    got = [json.loads(l)["pod"] for l in r.stdout.replace("}{", "}\n{").splitlines() if l.startswith("{")]
    assert got == [EXPECT[e] for e in envs], r.stdout
    script = node.tmp + "/client.js"
    with open(script, "w") as f:
        f.write(NODE_CLIENT)
    out = run_json(node, "c-dev", [shutil.which("node") or "node", script, TO, ",".join(envs), "fresh"])
    assert [o.get("pod") for o in out] == [EXPECT[e] for e in envs], out
    assert not any(o["reused"] for o in out), out
    src = node.tmp + "/KaClient.java"
    with open(src, "w") as f:
        f.write(JAVA_CLIENT)
    out = run_json(node, "c-dev", [shutil.which("java") or "java", src, TO, ",".join(envs), "/close"],
                   timeout=120)
    assert [o.get("pod") for o in out] == [EXPECT[e] for e in envs], out
    out = run_json(node, "c-dev", [harness.PYTHON, "-c", ASYNCIO_CLIENT, TO, ",".join(envs)])
    assert [o.get("pod") for o in out] == [EXPECT[e] for e in envs], out
    out = run_json(node, "c-dev", [go_client(node), TO, ",".join(envs)])
    assert [o.get("pod") for o in out] == [EXPECT[e] for e in envs], out
    after = node.counters()
    # 5 clients x 7 connections, one pod: every connection is hinted to the set of the pod's
    # last relayed request but the first client's first and each client's dev.proj1.alice one
    # (the hint names dev, the pod's own); the hint is wrong (missed, re-routed) for the first
    # dev.proj2 and the dev: 5 + 4 x 6 hinted, 5 x 2 missed
    assert delta(before, after, "connect_seen", "req_failed", "hint_refused") == (35, 0, 0), (before, after)
    assert delta(before, after, "connect_hinted", "hint_missed") == (29, 10), (before, after)


def test_a_hinted_connect_that_fails_drops_the_hint(make_node):
    """The hinted set's pod stops listening while it is still listed ready: the one connect
    made to it by the hint is refused (as a connect to a dead pod is), counted, and the hint
    dropped: the pod's next connection goes to its own set. A set whose pod refuses is never
    hinted in the first place (the relay notes only upstreams it connected)."""
    node = build(make_node, "dead")
    hint_from(node)
    node.stop_server(fixtures.keyer("pr")("s-proj1"))
    before = node.counters()
    res = sequence(node, "c-dev", closes("-"))
    assert "error" in res["answers"][0], res
    after = node.counters()
    assert delta(before, after, "connect_hinted", "hint_connect_failed") == (1, 1), (before, after)
    before = after
    res = sequence(node, "c-dev", closes("-", "dev.proj1", "-"))
    pods = [a.get("pod") for a in res["answers"]]
    assert pods[0] == "pr/s-dev" and pods[2] == "pr/s-dev", res
    assert "error" in res["answers"][1], res  # the relay cannot connect either: reset
    after = node.counters()
    assert delta(before, after, "connect_hinted", "hint_connect_failed") == (0, 0), (before, after)
