"""Request environment from the HTTP env header, carried across services (issue 3).

The main node "hdr" (--default-env dev, --env-header-alias X-Env) is shared by the module.
Services (namespace hdr), target port 8080 on every pod:
    a   127.96.20.1:80 -> a-dev (dev), a-proj1 (dev.proj1), a-proj2 (dev.proj2)
    b   127.96.20.2:80 -> b-dev (dev)                      forwards the env header
    bn  127.96.20.3:80 -> bn-dev (dev)                     forwards NO header
    c   127.96.20.4:80 -> c-dev (dev), c-proj1 (dev.proj1)
    e   127.96.20.5:80 -> e-dev (dev), e-proj1 (dev.proj1)  TCP echo servers (non-HTTP)
    e1  127.96.20.6:80 -> the same pods, annotated envsteer.io/connection-per-request: "true"
Pods no service selects (entry points):
    gw    unlabelled (env dev), forwards X-Virtual-Env on its /call
    gwn   unlabelled, forwards nothing
    gwka  unlabelled, keep-alive HTTP/1.1 (one thread per connection), forwards X-Virtual-Env
    gw1   unlabelled, ONE thread serves every connection in turn (like a thread-pool worker)
    caller-proj1  dev.proj1 (pod clients)
a-*, b-dev and c-* forward X-Virtual-Env too. All podservers but gw1 are
thread-per-connection (ThreadingHTTPServer): the thread that reads a request also makes its
outbound call, so every pod is annotated envsteer.io/thread-context: "on".

The test process itself (a host process, in no managed cgroup, so never steered) sends the
tagged request straight to an entry pod's IP, like an ingress would; the entry pod's thread
adopts the request's environment and its connect() to a service uses it. Landing pods are
read from the chain of JSON answers (each hop reports its pod, the env header it received and
its raw request head; each /call hop reports the request it sent).

Two small extra nodes: "win" (--http-window 8192) and "noctx" (--no-header-context).

Outbound injection (the kernel inserting `X-Virtual-Env: <env>\\r\\n` after the request line
when a steered request leaves without one) is tested below, byte-exact.
"""
import base64
import json
import os
import re

import pytest

import fixtures
import harness
from harness import http_request as req

# Needs the request context (tp_btf/sock_recv_length, 6.3+): skipped, with the agent's
# reason, on kernels where its probe says absent (see conftest.py); runs everywhere else.
REQUEST_CONTEXT = pytest.mark.kernel_feature("request_context")

NS = "hdr"
PORT = 80
TP = 8080
SVC = {"a": "127.96.20.1", "b": "127.96.20.2", "bn": "127.96.20.3", "c": "127.96.20.4",
       "e": "127.96.20.5", "e1": "127.96.20.6"}
PER_REQUEST = {"envsteer.io/connection-per-request": "true"}
FWD = ["--forward-header", "X-Virtual-Env"]
PODS = [  # (name, app, ip, env, podserver args)
    ("a-dev", "a", "127.1.20.1", "dev", FWD),
    ("a-proj1", "a", "127.1.20.2", "dev.proj1", FWD),
    ("a-proj2", "a", "127.1.20.3", "dev.proj2", FWD),
    ("b-dev", "b", "127.1.20.11", "dev", FWD),
    ("bn-dev", "bn", "127.1.20.12", "dev", []),
    ("c-dev", "c", "127.1.20.21", "dev", FWD),
    ("c-proj1", "c", "127.1.20.22", "dev.proj1", FWD),
    ("e-dev", "e", "127.1.20.31", "dev", ["--echo"]),
    ("e-proj1", "e", "127.1.20.32", "dev.proj1", ["--echo"]),
    ("gw", "gw", "127.1.20.100", None, FWD),
    ("gwn", "gw", "127.1.20.101", None, []),
    ("gwka", "gw", "127.1.20.102", None, FWD + ["--keepalive"]),
    ("gw1", "gw", "127.1.20.103", None, ["--single-thread"]),
    ("caller-proj1", "caller", "127.1.20.110", "dev.proj1", []),
]
IP = {name: ip for name, _, ip, _, _ in PODS}
# Every podserver here is thread-per-request: the pods opt into the thread context.
THREAD_CTX = {"envsteer.io/thread-context": "on"}



k = fixtures.keyer(NS)


def vip(s):
    return "%s:%d" % (SVC[s], PORT)


def pod_addr(name):
    return "%s:%d" % (IP[name], TP)


def call_path(*svcs, split=None):
    """split: byte offsets at which every hop cuts its outbound request into sends."""
    path = "/call?" + "&".join("to=" + vip(s) for s in svcs)
    return path + ("&split=" + ",".join(str(x) for x in split) if split else "")


@pytest.fixture(scope="module")
def hdr(e2e_prerequisites):
    node = harness.Node("hdr", default_env="dev")
    try:
        for s, ip in SVC.items():
            if s == "e1":
                node.add_service(NS, s, ip, PORT, TP, protocols=("TCP",), selector={"app": "e"},
                                 annotations=PER_REQUEST)
            else:
                node.add_service(NS, s, ip, PORT, TP, protocols=("TCP",))
        for name, app, ip, env, _ in PODS:
            node.add_pod(NS, name, ip, app=app, env=env, port=TP, annotations=THREAD_CTX)
        node.write_manifests()
        for name, _, _, _, args in PODS:
            if name != "caller-proj1":
                node.start_server(k(name), args=args)
        node.start_agent(["--env-header-alias", "X-Env"])
        yield node
    finally:
        node.close()


def small_node(name, agent_args, net):
    """gwn (unlabelled entry, forwards nothing) + a-dev / a-proj1, on 127.1.<net>.x."""
    node = harness.Node(name, default_env="dev")
    try:
        fixtures.populate(node, NS,
                          services=[("a", "127.96.%d.1" % net, {"port": PORT, "target_port": TP,
                                                                "protocols": ("TCP",)})],
                          pods=[("a-dev", "127.1.%d.1" % net, "a", "dev"),
                                ("a-proj1", "127.1.%d.2" % net, "a", "dev.proj1"),
                                ("gwn", "127.1.%d.101" % net, "gw", None, {"annotations": THREAD_CTX})],
                          servers=("a-dev", "a-proj1", "gwn"), port=TP)
        node.start_agent(agent_args)
    except Exception:
        node.close()
        raise
    return node


@pytest.fixture(scope="module")
def win(e2e_prerequisites):
    node = small_node("win", ["--http-window", "8192"], 21)
    yield node
    node.close()


@pytest.fixture(scope="module")
def noctx(e2e_prerequisites):
    node = small_node("noctx", ["--no-header-context"], 22)
    yield node
    node.close()


# --------------------------------------------------------------------------- helpers

def answers(resp_answer):
    """The chain of JSON answers of a /call: [entry answer, next, next ...]."""
    out = []
    a = resp_answer
    while isinstance(a, dict):
        out.append(a)
        hop = a.get("hop")
        if not hop:
            break
        assert hop.get("ok"), "hop %s failed: %s" % (a.get("pod"), json.dumps(hop))
        a = a.get("next")
    return out


def landed(resp_answer):
    return [a["pod"] for a in answers(resp_answer)]


def send(node, to, pieces, responses=1, gap=0.05, key=None, timeout=10.0):
    """One connection from the host (key None) or a pod to `to`: pieces (bytes) each in its
    own send(), then `responses` responses read. Returns the list of answers."""
    if isinstance(pieces, bytes):
        pieces = [pieces]
    r = node.session(key, to, [{"pieces": pieces, "responses": responses}], gap=gap,
                     timeout=timeout)
    assert r["ok"], "session to %s failed: %s" % (to, r)
    return [x["answer"] for x in r["exchanges"][0]["responses"]]


def tagged(path, env, header="X-Virtual-Env", extra=()):
    hdrs = list(extra)
    if env is not None:
        hdrs.append((header, env))
    return req(path, hdrs, keepalive=False)


class Delta:
    """Datapath counter deltas around a block (counters from `envsteer status --json`)."""

    def __init__(self, node):
        self.node = node

    def __enter__(self):
        self.before = self.node.counters()
        return self

    def __exit__(self, *exc):
        after = self.node.counters()
        self.d = {k: after.get(k, 0) - self.before.get(k, 0) for k in after}

    def __getitem__(self, key):
        assert key in self.d, "no counter %r in status --json: %s" % (key, sorted(self.d))
        return self.d[key]


def inject(sent, env, header="X-Virtual-Env"):
    """What the kernel must turn `sent` into: `<header>: <env>\\r\\n` right after the
    request line, nothing else changed."""
    line, sep, rest = sent.partition("\r\n")
    assert sep, "no request line in %r" % sent
    return line + "\r\n" + "%s: %s\r\n" % (header, env) + rest


def echo_log_has(node, pod, sockname):
    path = os.path.join(node.log_dir, "server-%s-%s.log" % (NS, pod))
    with open(path, errors="replace") as f:
        return ("echo: connection from %s\n" % sockname) in f.read()


# --------------------------------------------------------------------------- 1. chain

CHAIN = {  # tag -> pods answering gw -> a -> b -> c (everyone forwards the header)
    "dev.proj1": ["gw", "a-proj1", "b-dev", "c-proj1"],
    "dev.proj1.zed": ["gw", "a-proj1", "b-dev", "c-proj1"],  # unknown: falls back by segment
    "dev": ["gw", "a-dev", "b-dev", "c-dev"],
    None: ["gw", "a-dev", "b-dev", "c-dev"],
}
# the header each hop of an untagged chain receives: the unlabelled gw inserts nothing, the
# labelled a-dev inserts its own env (auto-inject), which b-dev then forwards
UNTAGGED_HEADERS = [None, None, "dev", "dev"]


@pytest.mark.parametrize("tag", list(CHAIN), ids=lambda t: str(t))
@REQUEST_CONTEXT
def test_chain_forwarding(hdr, tag):
    """A tagged request reaches the tag's variant at every hop, through the shared b-dev."""
    (ans,) = send(hdr, pod_addr("gw"), tagged(call_path("a", "b", "c"), tag))
    assert landed(ans) == [k(p) for p in CHAIN[tag]], json.dumps(ans)
    chain = answers(ans)
    want = [tag] * len(chain) if tag is not None else UNTAGGED_HEADERS
    assert [a["got_header"] for a in chain] == want, json.dumps(ans)
    # a header the application sent arrives unchanged, byte for byte, at every hop
    for up, down in zip(chain[1:], chain[2:]):
        if up["got_header"] is None and down["got_header"] is not None:
            assert down["head"] == inject(up["hop"]["sent"], down["got_header"])
        else:
            assert down["head"] == up["hop"]["sent"], (up["pod"], down["pod"])


@pytest.mark.parametrize("entry,expect", [
    ("a-proj1", ["a-proj1", "b-dev", "c-proj1"]),
    ("a-dev", ["a-dev", "b-dev", "c-proj1"]),  # the header, not a's pod, decides downstream
])
@REQUEST_CONTEXT
def test_chain_entered_at_a_pod(hdr, entry, expect):
    """The tagged request sent straight to one of a's pods."""
    (ans,) = send(hdr, pod_addr(entry), tagged(call_path("b", "c"), "dev.proj1"))
    assert landed(ans) == [k(p) for p in expect], json.dumps(ans)


@REQUEST_CONTEXT
def test_chain_explain_agrees(hdr):
    """explain for the request env at each hop names the pod the chain landed on."""
    (ans,) = send(hdr, pod_addr("gw"), tagged(call_path("a", "b", "c"), "dev.proj1.zed"))
    got = landed(ans)
    for frm, svc, pod in (("gw", "a", got[1]), (got[1], "b", got[2]), (got[2], "c", got[3])):
        ex = hdr.explain(frm if "/" in frm else k(frm), k(svc) + ":%d" % PORT,
                         env="dev.proj1.zed")
        fe = harness.frontend(ex, vip(svc), "TCP")
        assert harness.backend_pods(fe) == [pod], json.dumps(ex)


# --------------------------------------------------------------------------- 2. no forwarding

@REQUEST_CONTEXT
def test_chain_b_not_forwarding_lands_via_thread_context(hdr):
    """bn forwards nothing: its thread adopted dev.proj1 from the request it read, so its own
    connect() to c lands on c-proj1 anyway."""
    (ans,) = send(hdr, pod_addr("gw"), tagged(call_path("a", "bn", "c"), "dev.proj1"))
    assert landed(ans) == [k("gw"), k("a-proj1"), k("bn-dev"), k("c-proj1")], json.dumps(ans)
    chain = answers(ans)
    assert chain[2]["got_header"] == "dev.proj1"  # a forwarded it to bn
    assert "X-Virtual-Env" not in chain[2]["hop"]["sent"]  # bn's code sent none


@pytest.mark.parametrize("tag", ["dev", None])
def test_chain_b_not_forwarding_stays_in_dev(hdr, tag):
    (ans,) = send(hdr, pod_addr("gw"), tagged(call_path("a", "bn", "c"), tag))
    assert landed(ans) == [k("gw"), k("a-dev"), k("bn-dev"), k("c-dev")], json.dumps(ans)


def test_no_injection_without_request_env(hdr):
    """An untagged request gives the thread no request env: the unlabelled gwn inserts
    nothing (the downstream head is exactly what it sent); each labelled pod inserts its own
    env (auto-inject, on by default)."""
    (ans,) = send(hdr, pod_addr("gwn"), tagged(call_path("a", "bn", "c"), None))
    chain = answers(ans)
    assert landed(ans) == [k("gwn"), k("a-dev"), k("bn-dev"), k("c-dev")]
    gwn, a = chain[0], chain[1]
    assert a["got_header"] is None
    assert a["head"] == gwn["hop"]["sent"]
    for up, down in zip(chain[1:], chain[2:]):
        assert down["got_header"] == "dev"
        assert down["head"] == inject(up["hop"]["sent"], "dev"), (up["pod"], down["pod"])


@pytest.mark.parametrize("split", [None, (3,), (14,)],
                         ids=["one-send", "reqline-split", "split-before-crlf"])
@REQUEST_CONTEXT
def test_injected_header_byte_exact(hdr, split):
    """bn forwards nothing; the kernel inserts the header of bn's thread env, byte-exact,
    right after the request line ("GET / HTTP/1.1\r\n", 16 bytes) - also when bn's request
    line was cut into two sends, as long as it ends in the send that ends the head."""
    (ans,) = send(hdr, pod_addr("gw"), tagged(call_path("a", "bn", "c", split=split),
                                               "dev.proj1"))
    chain = answers(ans)
    assert landed(ans) == [k("gw"), k("a-proj1"), k("bn-dev"), k("c-proj1")]
    bn, c = chain[2], chain[3]
    assert c["got_header"] == "dev.proj1"
    assert c["head"] == inject(bn["hop"]["sent"], "dev.proj1"), (c["head"], bn["hop"]["sent"])


@pytest.mark.parametrize("split", [(10, 40), (16,), (30,), (83,), (84,)],
                         ids=["three-sends", "after-reqline", "inside-host",
                              "before-final-crlf", "inside-final-crlf"])
@REQUEST_CONTEXT
def test_injected_header_head_in_several_sends(hdr, split):
    """bn writes its request head in several sends: the sk_msg program holds the pieces
    (bpf_msg_cork_bytes) until the head is complete, then decides and inserts the header
    right after the request line, byte-exact, nothing else changed - also when the last
    send holds only the LF of the final CRLF. bn's request to c is 85 bytes."""
    before = hdr.counters()
    (ans,) = send(hdr, pod_addr("gw"), tagged(call_path("a", "bn", "c", split=split),
                                               "dev.proj1"))
    chain = answers(ans)
    assert landed(ans) == [k("gw"), k("a-proj1"), k("bn-dev"), k("c-proj1")]
    bn, c = chain[2], chain[3]
    assert c["got_header"] == "dev.proj1"
    assert c["head"] == inject(bn["hop"]["sent"], "dev.proj1"), (c["head"], bn["hop"]["sent"])
    after = hdr.counters()
    assert after["req_head_corked"] - before["req_head_corked"] >= len(split), (before, after)
    assert after["tx_inject_failed"] == before["tx_inject_failed"], (before, after)


@pytest.mark.parametrize("tag,expect", [
    ("dev.proj1", ["gwn", "a-proj1", "b-dev", "c-proj1"]),
    ("dev.proj1.zed", ["gwn", "a-proj1", "b-dev", "c-proj1"]),
    ("dev", ["gwn", "a-dev", "b-dev", "c-dev"]),
])
@REQUEST_CONTEXT
def test_injection_carries_env_from_first_hop(hdr, tag, expect):
    """The entry gwn forwards nothing: a gets the header only because gwn's kernel inserted
    it (the request's env as received, unknown names included), and a, b forward it on."""
    (ans,) = send(hdr, pod_addr("gwn"), tagged(call_path("a", "b", "c"), tag))
    chain = answers(ans)
    assert landed(ans) == [k(p) for p in expect], json.dumps(ans)
    assert chain[1]["got_header"] == tag
    assert chain[1]["head"] == inject(chain[0]["hop"]["sent"], tag)
    assert chain[3]["got_header"] == tag


# --------------------------------------------------------------------------- 3. parsing

FILLER = [("X-Filler-%02d" % i, "f" * 80) for i in range(20)]  # 20 lines of 95 bytes


def split_at(data, *marks):
    """Split bytes before each occurrence of the given marker substrings."""
    cuts = sorted(data.index(m) for m in marks)
    out, prev = [], 0
    for c in cuts:
        out.append(data[prev:c])
        prev = c
    out.append(data[prev:])
    return [p for p in out if p]


def _second_segment():
    head = req(call_path("a"), FILLER + [("X-Virtual-Env", "dev.proj1")], keepalive=False)
    return split_at(head, b"X-Virtual-Env")


def _split_mid_name_and_value():
    head = req(call_path("a"), [("X-Virtual-Env", "dev.proj1")], keepalive=False)
    return split_at(head, b"l-Env", b"proj1", b"\r\n\r\n")


def _many_sends():
    head = req(call_path("a"), [("X-Virtual-Env", "dev.proj1")], keepalive=False)
    return [head[i:i + 9] for i in range(0, len(head), 9)]


def _crlf_split():
    head = req(call_path("a"), [("X-Virtual-Env", "dev.proj1")], keepalive=False)
    return [head[:-3], head[-3:-1], head[-1:]]


SEG_CASES = {
    "header-in-second-segment": _second_segment,
    "split-mid-name-and-value": _split_mid_name_and_value,
    "nine-byte-sends": _many_sends,
    "split-inside-final-crlf": _crlf_split,
}


@pytest.mark.parametrize("case", list(SEG_CASES))
@REQUEST_CONTEXT
def test_header_across_segments(hdr, case):
    pieces = SEG_CASES[case]()
    assert len(pieces) >= 2
    with Delta(hdr) as d:
        (ans,) = send(hdr, pod_addr("gwn"), pieces, gap=0.03)
    assert landed(ans) == [k("gwn"), k("a-proj1")], json.dumps(ans)
    assert ans["got_header"] == "dev.proj1"
    assert d["header_found"] >= 1 and d["header_invalid"] == 0


VALID = {  # header lines -> the a pod gwn's call must land on
    "exact": (["X-Virtual-Env: dev.proj1"], "a-proj1"),
    "lower-case-name": (["x-virtual-env: dev.proj1"], "a-proj1"),
    "mixed-case-name": (["X-VIRTUAL-env: dev.proj2"], "a-proj2"),
    "blanks-trimmed": (["X-Virtual-Env: \t  dev.proj1 \t "], "a-proj1"),
    "no-blank-after-colon": (["X-Virtual-Env:dev.proj2"], "a-proj2"),
    "unknown-sub-env": (["X-Virtual-Env: dev.proj1.zed"], "a-proj1"),
    "unknown-deep": (["X-Virtual-Env: dev.proj2.x.y.z"], "a-proj2"),
    "unknown-top": (["X-Virtual-Env: prod.x"], "a-dev"),  # no level known: pod env (dev)
    "63-bytes": (["X-Virtual-Env: dev.proj1." + "x" * 53], "a-proj1"),
    "dev": (["X-Virtual-Env: dev"], "a-dev"),
    "alias": (["X-Env: dev.proj1"], "a-proj1"),
    "alias-lower-case": (["x-env: dev.proj2"], "a-proj2"),
    "baggage": (["baggage: a=b, virtual-env=dev.proj1;p=1"], "a-proj1"),
    "baggage-two-headers": (["baggage: a=b", "baggage: c=d,virtual-env=dev.proj2"], "a-proj2"),
    "primary-beats-alias": (["X-Env: dev.proj2", "X-Virtual-Env: dev.proj1"], "a-proj1"),
    "alias-beats-baggage": (["baggage: virtual-env=dev.proj2", "X-Env: dev.proj1"], "a-proj1"),
    "bare-lf-line-ends": (None, "a-proj1"),
    "http-1.0": (None, "a-proj2"),
    "first-of-two": (["X-Virtual-Env: dev.proj1", "X-Virtual-Env: dev.proj2"], "a-proj1"),
    "first-valid-of-two": (["X-Virtual-Env: dev..x", "X-Virtual-Env: dev.proj2"], "a-proj2"),
}
RAW_VALID = {
    "bare-lf-line-ends": "GET %s HTTP/1.1\nHost: x\nX-Virtual-Env: dev.proj1\nConnection: close\n\n",
    "http-1.0": "GET %s HTTP/1.0\r\nHost: x\r\nX-Virtual-Env: dev.proj2\r\n\r\n",
}


@pytest.mark.parametrize("case", list(VALID))
@REQUEST_CONTEXT
def test_valid_header_values(hdr, case):
    lines, pod = VALID[case]
    if lines is None:
        head = (RAW_VALID[case] % call_path("a")).encode()
    else:
        head = req(call_path("a"), lines, keepalive=False)
    with Delta(hdr) as d:
        (ans,) = send(hdr, pod_addr("gwn"), head)
    assert landed(ans) == [k("gwn"), k(pod)], json.dumps(ans)
    assert d["header_found"] >= 1 and d["header_invalid"] == 0


INVALID = {
    "empty": "X-Virtual-Env:",
    "blank-only": "X-Virtual-Env:    ",
    "bad-char": "X-Virtual-Env: dev.proj1!",
    "slash": "X-Virtual-Env: dev/proj1",
    "empty-segment": "X-Virtual-Env: dev..proj1",
    "leading-dot": "X-Virtual-Env: .dev.proj1",
    "trailing-dot": "X-Virtual-Env: dev.proj1.",
    "64-bytes": "X-Virtual-Env: dev.proj1." + "x" * 54,
    "list": "X-Virtual-Env: dev.proj1, dev.proj2",
    "inner-blank": "X-Virtual-Env: dev. proj1",
    "baggage-percent": "baggage: virtual-env=dev%2Eproj1",
}


@pytest.mark.parametrize("case", list(INVALID))
@REQUEST_CONTEXT
def test_invalid_header_values_count_as_absent(hdr, case):
    line = INVALID[case]
    head = req(call_path("a"), [line], keepalive=False)
    with Delta(hdr) as d:
        (ans,) = send(hdr, pod_addr("gwn"), head)
    assert landed(ans) == [k("gwn"), k("a-dev")], json.dumps(ans)
    # gwn's ingress counts it once; a-dev's request (no env to insert) is header_absent
    assert d["header_invalid"] == 1, d.d
    assert d["header_found"] == 0, d.d


NOT_THE_HEADER = {
    "longer-name": "X-Virtual-Env-Old: dev.proj1",
    "shorter-name": "X-Virtual-En: dev.proj1",
    "prefixed-name": "XX-Virtual-Env: dev.proj1",
    "baggage-key-case": "baggage: Virtual-Env=dev.proj1",
    "baggage-other-key": "baggage: virtual-env-x=dev.proj1",
    "in-a-value": "X-Note: X-Virtual-Env: dev.proj1",
}


@pytest.mark.parametrize("case", list(NOT_THE_HEADER))
def test_other_headers_are_not_the_env_header(hdr, case):
    head = req(call_path("a"), [NOT_THE_HEADER[case]], keepalive=False)
    with Delta(hdr) as d:
        (ans,) = send(hdr, pod_addr("gwn"), head)
    assert landed(ans) == [k("gwn"), k("a-dev")], json.dumps(ans)
    assert d["header_found"] == 0 and d["header_invalid"] == 0, d.d


@REQUEST_CONTEXT
def test_invalid_counter_in_metrics(hdr):
    def metric():
        code, body = hdr.admin_get("/metrics")
        assert code == 200
        m = re.search(r'^envsteer_datapath_total\{event="header_invalid"\}\s+(\d+)', body, re.M)
        assert m, body[:2000]
        return int(m.group(1))

    before = metric()
    send(hdr, pod_addr("gwn"), req("/", ["X-Virtual-Env: a..b"], keepalive=False))
    assert metric() == before + 1


def window_head(filler_bytes, env="dev.proj1", path=None):
    """A request whose env header comes after about filler_bytes of other headers."""
    n = max(1, filler_bytes // 100)
    filler = [("X-Pad-%03d" % i, "p" * (100 - len("X-Pad-000: \r\n"))) for i in range(n)]
    head = req(path or call_path("a"), filler + [("X-Virtual-Env", env)], keepalive=False)
    end = head.index(b"X-Virtual-Env") + len("X-Virtual-Env: %s\r\n" % env)
    return head, end


@REQUEST_CONTEXT
def test_header_inside_window(hdr):
    head, end = window_head(3800)
    assert end < 4000
    with Delta(hdr) as d:
        (ans,) = send(hdr, pod_addr("gwn"), head)
    assert landed(ans) == [k("gwn"), k("a-proj1")]
    assert d["header_beyond_window"] == 0


@REQUEST_CONTEXT
def test_header_beyond_window_is_ignored_and_counted(hdr):
    head, end = window_head(4200)
    assert end > 4200
    with Delta(hdr) as d:
        (ans,) = send(hdr, pod_addr("gwn"), head)
    assert ans["got_header"] == "dev.proj1"  # the application did receive it
    assert landed(ans) == [k("gwn"), k("a-dev")], json.dumps(ans)
    assert d["header_beyond_window"] == 1, d.d
    assert d["header_found"] == 0, d.d


@pytest.mark.parametrize("end,pod", [(4095, "a-proj1"), (4096, "a-proj1"), (4097, "a-dev")])
@REQUEST_CONTEXT
def test_window_boundary(hdr, end, pod):
    """The env header counts when its whole line, up to and including the LF, lies within
    the first 4096 bytes of the request (docs/http-parser.md, "The window")."""
    def head(pad):
        return req(call_path("a"), [("X-Pad", "p" * pad), ("X-Virtual-Env", "dev.proj1")],
                   keepalive=False)
    h = head(0)
    h = head(end - (h.index(b"X-Virtual-Env") + len(b"X-Virtual-Env: dev.proj1\r\n")))
    assert h.index(b"X-Virtual-Env") + len(b"X-Virtual-Env: dev.proj1\r\n") == end
    (ans,) = send(hdr, pod_addr("gwn"), h)
    assert landed(ans) == [k("gwn"), k(pod)]


@REQUEST_CONTEXT
def test_header_beyond_window_in_segments(hdr):
    """Same, with the 4 KiB of headers arriving in four segments."""
    head, _ = window_head(4200)
    pieces = [head[i:i + 1100] for i in range(0, len(head), 1100)]
    with Delta(hdr) as d:
        (ans,) = send(hdr, pod_addr("gwn"), pieces, gap=0.03)
    assert landed(ans) == [k("gwn"), k("a-dev")]
    assert d["header_beyond_window"] == 1, d.d


@REQUEST_CONTEXT
def test_wider_window_honours_the_same_request(win):
    head, end = window_head(4200, path=call_path_n(21))
    with Delta(win) as d:
        (ans,) = send(win, "127.1.21.101:%d" % TP, head)
    assert landed(ans) == [k("gwn"), k("a-proj1")], json.dumps(ans)
    assert d["header_beyond_window"] == 0 and d["header_found"] >= 1, d.d
    st = json.loads(win.status().stdout)
    assert st["agent"]["settings"]["http_window"] == 8192


# --------------------------------------------------------------------------- 4./5. keep-alive

def ka_exchange(env=None, header="X-Virtual-Env", split=False):
    hdrs = [(header, env)] if env is not None else []
    head = req(call_path("a"), hdrs)
    pieces = split_at(head, header.encode()) if (split and env is not None) else [head]
    return {"pieces": pieces, "responses": 1}


def ka_run(node, exchanges, to=None):
    r = node.session(None, to or pod_addr("gwka"), exchanges, gap=0.03)
    assert r["ok"], r
    return [x["responses"][0]["answer"] for x in r["exchanges"]]


@REQUEST_CONTEXT
def test_keepalive_alternating_envs(hdr):
    """One keep-alive connection (one server thread): each request's outbound call follows
    that request's own env."""
    seq = [("dev.proj1", "X-Virtual-Env", "a-proj1"), ("dev", "X-Virtual-Env", "a-dev"),
           ("dev.proj2", "X-Virtual-Env", "a-proj2"), ("dev.proj1.zed", "X-Virtual-Env", "a-proj1"),
           (None, "X-Virtual-Env", "a-dev"), ("dev.proj2", "X-Env", "a-proj2"),
           ("dev.proj1", "x-virtual-env", "a-proj1"), (None, "X-Virtual-Env", "a-dev")]
    got = ka_run(hdr, [ka_exchange(e, h) for e, h, _ in seq])
    assert [landed(a)[1] for a in got] == [k(p) for _, _, p in seq]


@REQUEST_CONTEXT
def test_keepalive_header_in_second_segment(hdr):
    """Requests split before the header: the thread's first read of each request sees only
    the request line (the socket still holds the previous request's env); the head is
    complete before the handler makes its call."""
    envs = ["dev.proj1", "dev.proj2", None, "dev.proj1", "dev"]
    got = ka_run(hdr, [ka_exchange(e, split=True) for e in envs])
    expect = {"dev.proj1": "a-proj1", "dev.proj2": "a-proj2", None: "a-dev", "dev": "a-dev"}
    assert [landed(a)[1] for a in got] == [k(expect[e]) for e in envs]


@REQUEST_CONTEXT
def test_keepalive_no_stale_env(hdr):
    """A request without the header after one with it: no stale env (lands on dev)."""
    got = ka_run(hdr, [ka_exchange("dev.proj1"), ka_exchange(None), ka_exchange(None)])
    assert [landed(a)[1] for a in got] == [k("a-proj1"), k("a-dev"), k("a-dev")]
    assert [a["got_header"] for a in got] == ["dev.proj1", None, None]


@REQUEST_CONTEXT
def test_keepalive_invalid_after_valid_clears(hdr):
    got = ka_run(hdr, [ka_exchange("dev.proj1"), ka_exchange("dev..proj1"),
                       ka_exchange("dev.proj2")])
    assert [landed(a)[1] for a in got] == [k("a-proj1"), k("a-dev"), k("a-proj2")]


@REQUEST_CONTEXT
def test_keepalive_with_bodies(hdr):
    """Requests with Content-Length and chunked bodies between the heads: the parser skips
    the bodies and reads each following head."""
    body = b"x" * 3000 + b"X-Virtual-Env: dev.proj2\r\n\r\n"  # a body that looks like a header
    chunked = (b"GET " + call_path("a").encode() + b" HTTP/1.1\r\nHost: x\r\n"
               b"X-Virtual-Env: dev.proj2\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\n\r\n")
    exchanges = [
        {"pieces": [req(call_path("a"), [("X-Virtual-Env", "dev.proj1")], body=body)]},
        {"pieces": [req(call_path("a"), [], body=body)]},
        {"pieces": [chunked]},
        {"pieces": [req(call_path("a"), [])]},
    ]
    got = ka_run(hdr, exchanges)
    assert [landed(a)[1] for a in got] == [k("a-proj1"), k("a-dev"), k("a-proj2"), k("a-dev")]


@REQUEST_CONTEXT
def test_pipelined_same_env(hdr):
    """Two requests in one send(): both parsed (header_found counts both) and, both carrying
    dev.proj1, both outbound calls land on a-proj1."""
    two = req(call_path("a"), [("X-Virtual-Env", "dev.proj1")]) * 2
    with Delta(hdr) as d:
        got = send(hdr, pod_addr("gwka"), two, responses=2)
    assert [landed(a)[1] for a in got] == [k("a-proj1")] * 2
    assert d["header_found"] >= 2


@pytest.mark.parametrize("first,second", [("dev.proj1", None), (None, "dev.proj1")])
@REQUEST_CONTEXT
def test_pipelined_mixed_envs_last_head_in_read_wins(hdr, first, second):
    """Two pipelined requests of different envs in one send(). The server thread's first
    read() returns both heads at once; by then ingress has parsed both, and the thread adopts
    the env of the LAST complete head (the kernel cannot know which of the requests in one
    read the thread is serving). Which env the thread holds when it sends each outbound
    call depends on timing; whatever the kernel inserts, per-request steering routes each
    outbound request by the env it actually carries: a pod of that env answers it."""
    two = (req(call_path("a"), [("X-Virtual-Env", first)] if first else []) +
           req(call_path("a"), [("X-Virtual-Env", second)] if second else []))
    with Delta(hdr) as d:
        got = send(hdr, pod_addr("gwka"), two, responses=2)
    assert [a["got_header"] for a in got] == [first, second]
    for a in got:
        down = answers(a)[1]
        expect = "a-proj1" if down["got_header"] == "dev.proj1" else "a-dev"
        assert down["pod"] == k(expect), json.dumps(a)
    # the second call always follows the last head's env
    assert answers(got[1])[1]["pod"] == k("a-proj1" if second == "dev.proj1" else "a-dev")
    assert d["header_found"] >= 1 and d["header_absent"] >= 1  # each head parsed


MALFORMED = {  # a request the server accepts but envsteer's parser gives up on
    "obs-fold": ["X-Foo: a", "  folded"],
    "bad-content-length": ["Content-Length: abc"],
}


@pytest.mark.parametrize("case", list(MALFORMED))
@REQUEST_CONTEXT
def test_keepalive_unparseable_request_clears_env(hdr, case):
    """After a tagged request, a request envsteer cannot parse (the server accepts it) on the
    same keep-alive connection, then a plain untagged one: neither may inherit dev.proj1
    (issue 3: "no stale environment may leak to the next request on a keep-alive
    connection"; DESIGN: no request env -> the pod's own env)."""
    exchanges = [ka_exchange("dev.proj1"),
                 {"pieces": [req(call_path("a"), MALFORMED[case])], "responses": 1},
                 ka_exchange(None)]
    got = ka_run(hdr, exchanges)
    assert [a["got_header"] for a in got] == ["dev.proj1", None, None]
    pods = [landed(a)[1] for a in got]
    assert pods == [k("a-proj1"), k("a-dev"), k("a-dev")], "landed: %s" % pods


@REQUEST_CONTEXT
def test_one_thread_serving_connections_in_turn(hdr):
    """gw1's single thread serves one connection after the other: each request's env (or
    none) replaces the previous one."""
    seq = [("dev.proj1", "a-proj1"), (None, "a-dev"), ("dev.proj2", "a-proj2"),
           ("dev.proj1.zed", "a-proj1"), ("dev", "a-dev"), (None, "a-dev")]
    got = [send(hdr, pod_addr("gw1"), tagged(call_path("a"), e))[0] for e, _ in seq]
    assert [landed(a)[1] for a in got] == [k(p) for _, p in seq]


@pytest.mark.parametrize("case", list(MALFORMED))
@REQUEST_CONTEXT
def test_one_thread_unparseable_request_after_tagged(hdr, case):
    """gw1's thread served a dev.proj1 request; the next connection's request (untagged) is
    one envsteer's parser gives up on (the server accepts it). Its outbound call must not
    be steered by the previous connection's env."""
    (first,) = send(hdr, pod_addr("gw1"), tagged(call_path("a"), "dev.proj1"))
    (second,) = send(hdr, pod_addr("gw1"), req(call_path("a"), MALFORMED[case],
                                                   keepalive=False))
    assert second["got_header"] is None
    assert [landed(first)[1], landed(second)[1]] == [k("a-proj1"), k("a-dev")]


@pytest.mark.parametrize("tag,expect", [("dev.proj1", ["a-proj1", "c-proj1", "a-proj1"]),
                                        (None, ["a-dev", "c-dev", "a-dev"])])
@REQUEST_CONTEXT
def test_sequential_calls_keep_request_env(hdr, tag, expect):
    """One handler makes three calls in turn; reading each response (on a managed client
    socket) does not change the thread's request env."""
    path = "/multi?to=%s&to=%s&to=%s" % (vip("a"), vip("c"), vip("a"))
    (ans,) = send(hdr, pod_addr("gwn"), tagged(path, tag))
    assert [c["pod"] for c in ans["calls"]] == [k(p) for p in expect], json.dumps(ans)


# --------------------------------------------------------------------------- 6. non-HTTP

PAYLOADS = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4,  # TLS-ish
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: x\r\n\r\n",  # lower-case method: not HTTP
    b"X-Virtual-Env: dev.proj1\r\n\r\n",
    bytes((i * 7 + 3) % 256 for i in range(100000)),
    b"\r\n\r\n",
]


@REQUEST_CONTEXT
def test_non_http_passes_unchanged_to_pod(hdr):
    """Non-HTTP bytes to a pod's port (the same port the HTTP pods use) from a host process:
    echoed exactly, the connection keeps working, rx_not_http counts it once (only the
    pod's side of the connection is managed)."""
    with Delta(hdr) as d:
        r = hdr.echo(None, pod_addr("e-dev"), PAYLOADS)
    assert r["ok"], r
    assert [x["equal"] for x in r["rounds"]] == [True] * len(PAYLOADS)
    assert d["rx_not_http"] == 1, d.d
    assert d["header_found"] == 0 and d["header_invalid"] == 0


@pytest.mark.parametrize("first", [0, 3], ids=["tls-first", "lowercase-request-first"])
def test_non_http_steered_from_pod_unchanged(hdr, first):
    """A dev.proj1 pod's client to service e (steered connection): lands on e-proj1,
    getpeername() is the service address, every byte comes back unchanged."""
    payloads = [PAYLOADS[first]] + [p for i, p in enumerate(PAYLOADS) if i != first]
    r = hdr.echo(k("caller-proj1"), vip("e"), payloads)
    assert r["ok"], r
    assert r["peername"] == vip("e")
    assert all(x["equal"] for x in r["rounds"])
    assert echo_log_has(hdr, "e-proj1", r["sockname"])


@pytest.mark.parametrize("first", [0, 3], ids=["tls-first", "lowercase-request-first"])
@REQUEST_CONTEXT
@pytest.mark.parametrize("svc,pod", [("e", "e-dev"), ("e1", "e-proj1")],
                         ids=["pooled-service", "connection-per-request-service"])
def test_non_http_from_thread_with_request_env_unchanged(hdr, first, svc, pod):
    """gw's thread serves a dev.proj1 request and opens a non-HTTP connection: to service e
    it takes gw's own env (a connection may outlive the request: e-dev), to e1, whose
    connections carry one request each, the request env (e-proj1). Nothing is inserted into
    non-HTTP bytes."""
    payloads = [PAYLOADS[first]] + [p for i, p in enumerate(PAYLOADS[:5]) if i != first]
    q = "&".join("p=" + base64.urlsafe_b64encode(p).decode() for p in payloads)
    (ans,) = send(hdr, pod_addr("gw"), tagged("/echo?to=%s&%s" % (vip(svc), q), "dev.proj1"))
    hop = ans["hop"]
    assert hop["ok"], hop
    assert all(x["equal"] for x in hop["rounds"]), hop
    assert echo_log_has(hdr, pod, hop["sockname"])


@REQUEST_CONTEXT
def test_http_after_non_http_still_served(hdr):
    """The HTTP pods keep serving after non-HTTP connections to the same port."""
    r = hdr.echo(None, pod_addr("e-proj1"), PAYLOADS[:2])
    assert r["ok"]
    (ans,) = send(hdr, pod_addr("gwn"), tagged(call_path("a"), "dev.proj1"))
    assert landed(ans) == [k("gwn"), k("a-proj1")]


# --------------------------------------------------------------------------- 7. off switch

def test_no_header_context(noctx):
    """--no-header-context: a tagged request does not steer the outbound call (pod env)."""
    with Delta(noctx) as d:
        (ans,) = send(noctx, "127.1.22.101:%d" % TP, tagged(call_path_n(22), "dev.proj1"))
    assert ans["got_header"] == "dev.proj1"
    assert landed(ans) == [k("gwn"), k("a-dev")], json.dumps(ans)
    assert d["header_found"] == 0 and d["thread_adopt"] == 0 and d["env_from_request"] == 0
    st = json.loads(noctx.status().stdout)
    assert st["agent"]["request_context"] is False, json.dumps(st["agent"])


def call_path_n(net):
    return "/call?to=127.96.%d.1:%d" % (net, PORT)


def test_header_context_reported_on(hdr):
    """On where the kernel has it; where not (e.g. 6.1), off with the reason as a note."""
    st = json.loads(hdr.status().stdout)
    kernel = harness.kernel_features()
    assert st["agent"]["request_context"] is kernel["request_context"], json.dumps(st["agent"])
    if not kernel["request_context"]:
        assert st["agent"]["kernel"]["notes"], json.dumps(st["agent"])
    assert st["agent"]["settings"]["env_header"] == "X-Virtual-Env"
    assert st["agent"]["settings"]["env_header_aliases"] == ["X-Env"]


# --------------------------------------------------------------------------- 8. explain

@REQUEST_CONTEXT
def test_explain_request_env_resolution(hdr):
    """explain --env dev.proj1.zed: the walk tries the unknown name, then dev.proj1, which
    has a ready pod of a; consistent with where a request tagged dev.proj1.zed lands."""
    (ans,) = send(hdr, pod_addr("gwn"), tagged(call_path("a"), "dev.proj1.zed"))
    observed = landed(ans)[1]
    ex = hdr.explain(k("gwn"), k("a") + ":%d" % PORT, env="dev.proj1.zed")
    fe = harness.frontend(ex, vip("a"), "TCP")
    ctx = json.dumps(ex)
    assert ex.get("env") == "dev.proj1.zed", ctx
    assert fe["resolved_env"] == "dev.proj1", ctx
    assert harness.backend_pods(fe) == [observed] == [k("a-proj1")], ctx
    walk = fe.get("walk") or []
    assert [w.get("env") for w in walk][:2] == ["dev.proj1.zed", "dev.proj1"], ctx
    assert walk[0].get("known") is False and walk[0].get("ready") == 0, ctx
    assert walk[1].get("ready", 0) >= 1, ctx
