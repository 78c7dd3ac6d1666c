"""Hardening (issue 12, items 1 and 2): every byte of one request - head and body - follows one
route, whatever the sizes of the sends and of the kernel's scatterlist regions; once the
parser cannot frame a connection's requests, no later byte goes to another pod than the
connection's own, and a connection that was re-routed fails visibly instead.

Node "smug" (--default-env dev): service s 127.96.46.1:80 with keep-alive pods (kaserver.py)
s-dev (dev, 127.1.46.1) and s-p1 (dev.p1, 127.1.46.2); client pod c-dev (dev, 127.1.46.11),
whose connections are made to s-dev; requests tagged dev.p1 on them are re-routed to s-p1.
Bodies look like requests ("GET /smuggled ..."): if one were split from its head it would be
executed as a request by the other pod, and the answers would go out of step.
"""
import base64
import json
import os

import pytest

import fixtures
import harness

NS = "smug"
VIP = "127.96.46.1"
TO = VIP + ":80"
HERE = os.path.dirname(os.path.abspath(__file__))
KASERVER = os.path.join(HERE, "kaserver.py")
RAWCLIENT = os.path.join(HERE, "rawclient.py")
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: dev\r\n\r\n"
REQUEST_CONTEXT = pytest.mark.kernel_feature("request_context")


k = fixtures.keyer(NS)


@pytest.fixture(scope="module")
def smug(e2e_prerequisites):
    node = harness.Node("smug", default_env="dev")
    try:
        fixtures.populate(node, NS, services=[("s", VIP, {"protocols": ("TCP",)})],
                          pods=[("s-dev", "127.1.46.1", "s", "dev"), ("s-p1", "127.1.46.2", "s", "dev.p1"),
                                ("c-dev", "127.1.46.11", "c", "dev")],
                          servers=("s-dev", "s-p1"), server_script=KASERVER)
        # Every case here starts from a connection made to c-dev's own pod (s-dev): no connect
        # hints (a hinted connection refuses what cannot be routed: test_hints.py)
        node.start_agent(["--no-connect-hints"])
        yield node
    finally:
        node.close()


def head(method, path, env, size, framing):
    """A request head of exactly `size` bytes (padded by an X-Pad header) with the env header
    first; framing: "cl" (Content-Length of SMUGGLED), "chunked" or "none"."""
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: x"]
    if env:
        lines.append("X-Virtual-Env: " + env)
    if framing == "cl":
        lines.append("Content-Length: %d" % len(SMUGGLED))
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
    base = len("\r\n".join(lines)) + len("\r\nX-Pad: \r\n\r\n")
    assert size >= base, (size, base)
    lines.append("X-Pad: " + "p" * (size - base))
    h = ("\r\n".join(lines) + "\r\n\r\n").encode()
    assert len(h) == size
    return h


def request(env, size, framing):
    if framing == "none":
        return head("GET", "/", env, size, framing)
    body = SMUGGLED if framing == "cl" else b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    return head("POST", "/echo", env, size, framing) + body


# The sends are gap_ms apart: a request sent before the answer to a re-routed one has arrived
# is HTTP pipelining across sends, whose answers can come out of order (README, limits); the
# gap leaves the answer time to come, also on a loaded machine.
def raw(node, sends, responses, gap_ms=200, timeout=10, pod="c-dev"):
    argv = [harness.PYTHON, RAWCLIENT, "--to", TO, "--responses", str(responses),
            "--gap-ms", str(gap_ms), "--timeout", str(timeout)]
    for s in sends:
        argv += ["--send", base64.b64encode(s).decode()]
    r = node.run_in_pod(k(pod), argv, timeout=60)
    assert r.returncode == 0, r
    return json.loads(r.stdout.strip().splitlines()[-1])


def pieces(data, n):
    return [data[i:i + n] for i in range(0, len(data), n)]


def check_answer(resp, framing, pod):
    assert resp["pod"] == k(pod), resp
    if framing == "none":
        assert json.loads(resp["body"])["path"] == "/", resp
    else:
        assert resp["body"].encode("latin-1") == SMUGGLED, resp


@REQUEST_CONTEXT
@pytest.mark.parametrize("framing", ["cl", "chunked", "none"])
@pytest.mark.parametrize("size", [1000, 1023, 1024, 1025, 1100, 2048, 4000, 9000])
def test_long_head_in_one_send_follows_its_env(smug, size, framing):
    """A head of 1000-9000 bytes in one send: its env header is read (it is near the start),
    the whole request - head and body - goes to s-p1; the next request on the connection
    (dev) goes to s-dev and gets its own answer: nothing split, nothing out of step."""
    r = raw(smug, [request("dev.p1", size, framing), request("dev", 200, "none")], 2)
    assert r["error"] is None, r
    check_answer(r["responses"][0], framing, "s-p1")
    second = r["responses"][1]
    assert second["pod"] == k("s-dev") and json.loads(second["body"])["path"] == "/", r
    assert r["extra"] == "", r


@REQUEST_CONTEXT
@pytest.mark.parametrize("framing", ["cl", "chunked", "none"])
@pytest.mark.parametrize("size,piece", [(3000, 500), (4000, 999), (9000, 1000), (9000, 3000)])
def test_long_head_in_many_sends(smug, size, piece, framing):
    """The same request cut into sends: a head that completes within the hold limit (window
    + 1 KiB) is routed by its env; a longer one cannot wait for its env and goes, whole with
    its body, to the connection's own pod (counted req_head_unroutable). Either way one pod
    gets all of it."""
    before = smug.counters()
    req = request("dev.p1", size, framing)
    r = raw(smug, pieces(req, piece) + [request("dev.p1", 200, "none")], 2)
    assert r["error"] is None, r
    after = smug.counters()
    unroutable = after["req_head_unroutable"] - before["req_head_unroutable"]
    if size <= 4096:
        check_answer(r["responses"][0], framing, "s-p1")
        assert unroutable == 0
    else:
        check_answer(r["responses"][0], framing, "s-dev")
        assert unroutable >= 1
    second = r["responses"][1]
    assert second["pod"] == k("s-p1") and json.loads(second["body"])["path"] == "/", r
    assert r["extra"] == "", r


@REQUEST_CONTEXT
@pytest.mark.parametrize("bad", [
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: dev\r\nX-Fold: a\r\n b\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: dev\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"BREW / HTTP/3.0\r\nHost: x\r\nX-Virtual-Env: dev\r\n\r\n",
], ids=["obs-fold", "cl-and-te", "bad-version"])
def test_unframed_after_a_rerouted_request_fails_visibly(smug, bad):
    """Request 1 (dev.p1) is re-routed to s-p1; request 2 cannot be framed: its bytes must
    not follow request 1 to s-p1 (they would be answered there) - the send fails, counted."""
    before = smug.counters()
    r = raw(smug, [request("dev.p1", 200, "none"), bad], 2, timeout=2)
    after = smug.counters()
    assert r["responses"][0]["pod"] == k("s-p1"), r
    assert all(x["pod"] != k("s-p1") for x in r["responses"][1:]), r
    assert r.get("send_error") == "EACCES", r
    assert after["req_unframed_failed"] - before["req_unframed_failed"] >= 1


@REQUEST_CONTEXT
@pytest.mark.parametrize("bad", [
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: dev.p1\r\nX-Fold: a\r\n b\r\n\r\n",
    b"BREW / HTTP/3.0\r\nHost: x\r\nX-Virtual-Env: dev.p1\r\n\r\n",
], ids=["obs-fold", "bad-version"])
def test_unframed_on_own_connection_stays_with_its_pod(smug, bad):
    """Request 1 (dev) went out on the connection (s-dev); request 2 (tagged dev.p1 but not
    parseable) may only go to the connection's own pod, never to s-p1."""
    before = smug.counters()
    r = raw(smug, [request("dev", 200, "none"), bad], 2, gap_ms=100, timeout=2)
    after = smug.counters()
    assert r["responses"][0]["pod"] == k("s-dev"), r
    assert all(x["pod"] == k("s-dev") for x in r["responses"]), r
    assert after["req_unframed_failed"] == before["req_unframed_failed"]


def by_path(responses):
    """{path: response} of GET / and /next style answers; POST /echo answers under "/echo"."""
    out = {}
    for x in responses:
        try:
            out[json.loads(x["body"])["path"]] = x
        except (ValueError, KeyError, TypeError):
            out["/echo"] = x
    return out


@REQUEST_CONTEXT
def test_request_after_an_empty_line_split_across_sends(smug):
    """An empty line after a body whose CR ends one send and whose LF begins the next (a
    buffered writer flushing between them; found by tests/fuzz/fuzz_msg.c): the request after
    it is routed by its own env, not along with the request before it."""
    first = request("dev.p1", 200, "cl") + b"\r"
    second = b"\n" + head("GET", "/", "dev", 200, "none")
    r = raw(smug, [first, second], 2, gap_ms=200)
    assert r["error"] is None and r.get("send_error") is None, r
    got = by_path(r["responses"])
    check_answer(got["/echo"], "cl", "s-p1")
    assert got["/"]["pod"] == k("s-dev"), r
    assert r["extra"] == "", r


@REQUEST_CONTEXT
@pytest.mark.parametrize("bound", [False, True], ids=["slow-path", "upstream-bound"])
def test_pipelined_request_cut_by_the_end_of_a_send(smug, bound):
    """A request for dev.p1 and the first bytes of the next one (dev) in one send, the rest in
    the next send (found by tests/fuzz/fuzz_msg.c): pipelined for another target, the second
    request is refused (EACCES) like one whose head is complete, and never reaches s-p1. The
    kernel keeps the first request's redirect target in the message it holds for the second
    head (msg->sk_redir): passing that message would send it there."""
    before = smug.counters()
    warm = [request("dev.p1", 200, "none")] if bound else []
    nxt = head("GET", "/next", "dev", 200, "none")
    sends = warm + [request("dev.p1", 200, "none") + nxt[:100], nxt[100:]]
    r = raw(smug, sends, len(sends) - 1, gap_ms=300, timeout=3)
    after = smug.counters()
    assert all(x["pod"] == k("s-p1") for x in r["responses"]), r
    assert "/next" not in r["extra"], r
    assert r.get("send_error") == "EACCES", r
    assert after["req_pipeline_refused"] - before["req_pipeline_refused"] >= 1


@REQUEST_CONTEXT
@pytest.mark.parametrize("bound", [False, True], ids=["slow-path", "upstream-bound"])
def test_request_for_another_target_before_the_rerouted_answer(smug, bound):
    """HTTP pipelining across sends: a request re-routed to s-p1 whose answer takes 0.8 s, then,
    in a send of its own 150 ms later, a request for the connection's own pod (dev). s-dev would
    answer first and the client would read that answer as the re-routed request's: the second
    request is refused (EACCES, req_order_refused), the first is answered by s-p1, and nothing
    else arrives."""
    before = smug.counters()
    warm = [request("dev.p1", 200, "none")] if bound else []
    sends = warm + [head("GET", "/delay?s=0.8", "dev.p1", 200, "none"), head("GET", "/next", "dev", 200, "none")]
    r = raw(smug, sends, len(sends) - 1, gap_ms=150, timeout=5)
    after = smug.counters()
    assert r.get("send_error") == "EACCES", r
    assert r["error"] is None, r
    assert [x["pod"] for x in r["responses"]] == [k("s-p1")] * (len(sends) - 1), r
    assert r["extra"] == "", r
    assert after["req_order_refused"] - before["req_order_refused"] == 1, (before, after)


@REQUEST_CONTEXT
@pytest.mark.parametrize("bound", [False, True], ids=["slow-path", "upstream-bound"])
def test_rerouted_request_before_the_own_pods_answer(smug, bound):
    """The other way round: a request for the connection's own pod (s-dev) whose answer takes
    0.8 s, then, in a send of its own 150 ms later, a request re-routed to s-p1. s-p1 would answer
    first and the client would read that answer as the first request's: the kernel follows the
    own pod's responses on the client's connection (the service has two backend sets), so the
    second request is refused (EACCES, req_order_refused), the first is answered by s-dev, and
    nothing else arrives."""
    before = smug.counters()
    warm = [request("dev.p1", 200, "none")] if bound else []
    sends = warm + [head("GET", "/delay?s=0.8", "dev", 200, "none"), head("GET", "/next", "dev.p1", 200, "none")]
    r = raw(smug, sends, len(sends) - 1, gap_ms=150, timeout=5)
    after = smug.counters()
    assert r.get("send_error") == "EACCES", r
    assert r["error"] is None, r
    assert [x["pod"] for x in r["responses"]] == [k("s-p1")] * len(warm) + [k("s-dev")], r
    assert json.loads(r["responses"][-1]["body"])["path"] == "/delay", r
    assert r["extra"] == "", r
    assert after["req_order_refused"] - before["req_order_refused"] == 1, (before, after)
    assert after["req_order_untracked"] == before["req_order_untracked"], (before, after)


@REQUEST_CONTEXT
def test_no_change_of_target_after_a_head_request(smug):
    """The answer to HEAD has a Content-Length and no body: a tracker that counts answers cannot
    follow it, and a later answer's body could read as an answer head. So after a HEAD request on
    a connection, a request for another target on it is refused (EACCES, counted
    req_order_untracked), even once the HEAD was answered; the client reconnects. Requests for
    the same target go on."""
    before = smug.counters()
    sends = [head("HEAD", "/", "dev", 200, "none"), head("GET", "/", "dev", 200, "none"),
             head("GET", "/next", "dev.p1", 200, "none")]
    r = raw(smug, sends, 2, gap_ms=300)
    after = smug.counters()
    assert r.get("send_error") == "EACCES", r
    assert r["error"] is None, r
    assert [x["pod"] for x in r["responses"]] == [k("s-dev"), k("s-dev")], r
    assert r["extra"] == "", r
    assert after["req_order_refused"] - before["req_order_refused"] == 1, (before, after)
    assert after["req_order_untracked"] - before["req_order_untracked"] == 1, (before, after)


@REQUEST_CONTEXT
def test_rerouted_request_after_the_own_pods_answer(smug):
    """What mainstream clients do: the own pod's answer has arrived when the next request, for
    another target, is sent on the pooled connection. It is re-routed (no refusal), and the
    answers come in order: untagged (the kernel inserts the pod's env) and tagged."""
    before = smug.counters()
    sends = [head("GET", "/", None, 200, "none"), head("GET", "/next", "dev.p1", 200, "none"),
             head("GET", "/", "dev", 200, "none"), head("GET", "/next", "dev.p1", 200, "none")]
    r = raw(smug, sends, len(sends), gap_ms=300)
    after = smug.counters()
    assert r["error"] is None and r.get("send_error") is None, r
    assert [x["pod"] for x in r["responses"]] == [k("s-dev"), k("s-p1")] * 2, r
    assert r["extra"] == "", r
    assert after["req_order_refused"] == before["req_order_refused"], (before, after)

