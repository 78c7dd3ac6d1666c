"""The relay of re-routed requests (issue 14): isolated per client, bounded, non-blocking.

Node: service s (127.96.61.1:80 -> 8080) with keep-alive pods (kaserver.py) s-dev (dev) and
s-proj1 (dev.proj1); client pods c-att (the attacker), c-vic (the victim), both dev. Requests
tagged dev.proj1 on connections made to s-dev are re-routed: the first one of a connection
through the agent's relay. The attacks of the issue run against the victim, with assertions on
what the victim sees and on the bounds. The slow-server attack on a victim is in
test_relay_stress.py. The agent runs with --no-connect-hints: every new connection here is made
to its pod's own set, so that its first re-routed request takes the relay (with hints, a pod's
later connections would go to the set at connect(): test_hints.py)."""
import json
import os
import struct
import subprocess
import time

import fixtures
import harness

NS = "rl"
VIP = "127.96.61.1"
TO = VIP + ":80"
HERE = os.path.dirname(os.path.abspath(__file__))
KASERVER = os.path.join(HERE, "kaserver.py")
KALOAD = os.path.join(HERE, "kaload.py")
RELAYLOAD = os.path.join(HERE, "relayload.py")


k = fixtures.keyer(NS)


def build(make_node, name, extra_args=(), proj2=False, extra_clients=0):
    """extra_clients: more client pods (dev) c-v1, c-v2, ... besides c-att and c-vic."""
    node = make_node(name, default_env="dev")
    node.add_service(NS, "s", VIP, 80, 8080)
    node.add_pod(NS, "s-dev", "127.1.61.1", app="s", env="dev")
    node.add_pod(NS, "s-proj1", "127.1.61.2", app="s", env="dev.proj1")
    servers = ["s-dev", "s-proj1"]
    if proj2:
        node.add_pod(NS, "s-proj2", "127.1.61.3", app="s", env="dev.proj2")
        servers.append("s-proj2")
    node.add_pod(NS, "c-att", "127.1.61.11", app="c", env="dev")
    node.add_pod(NS, "c-vic", "127.1.61.12", app="c", env="dev")
    for i in range(1, extra_clients + 1):
        node.add_pod(NS, "c-v%d" % i, "127.1.61.%d" % (20 + i), app="c", env="dev")
    node.write_manifests()
    for p in servers:
        node.start_server(k(p), script=KASERVER)
    node.start_agent(["--no-connect-hints"] + list(extra_args))
    return node


def run_json(node, pod, argv, timeout=60.0):
    return fixtures.run_json(node, k(pod), argv, timeout)


def relay(node):
    return node.status_http()["per_request"]


def victim(node, n=30, errors=None, pod="c-vic"):
    """n re-routed requests, a new connection each; their latencies. Errors fail the test
    unless a list is given to collect them in."""
    res = run_json(node, pod, [harness.PYTHON, RELAYLOAD, "--to", TO, "--env", "dev.proj1",
                                   "--victim", str(n), "--seconds", "60"], timeout=90)
    if errors is None:
        assert res["errors"] == [], res
    else:
        errors += res["errors"]
    assert res["pods"] == ["rl/s-proj1"] * len(res["pods"]) and len(res["pods"]) + len(res["errors"]) == n, res
    return res["seconds"]


def relay_slot(pod, n):
    """es_relay_slot (maps/abi.h): the relay socket of a pod's clients, by its cgroup id."""
    return (((pod * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 32) % n


def cgroup_id(node, pod):
    """A pod's cgroup id (cgroup v2: its directory's inode number)."""
    return os.stat(node.pod(k(pod)).cgroup_dir).st_ino


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_request_slower_than_the_idle_timeout_gets_its_response(make_node):
    """An upstream with an outstanding request is never idle: a response slower than
    --upstream-idle-ms arrives; the idle upstream is closed afterwards."""
    node = build(make_node, "slowanswer", ["--upstream-idle-ms", "1000"])
    t0 = time.monotonic()
    res = run_json(node, "c-vic", [harness.PYTHON, KALOAD, "--to", TO, "--sequence",
                                   "dev.proj1@/delay?s=3,dev.proj1", "--timeout", "10"], timeout=40)
    assert [a.get("pod") for a in res["answers"]] == ["rl/s-proj1"] * 2, res
    assert time.monotonic() - t0 >= 3.0
    assert res["connects"] == 1, res
    st = relay(node)
    assert st["client_resets"]["response_timeout"] == 0, st


def test_response_slower_than_the_response_timeout_fails_the_client(make_node):
    """A server that never answers (and never closes): the client is reset once the upstream
    has been silent for --response-timeout-ms, counted; it does not hang."""
    node = build(make_node, "resptimeout", ["--response-timeout-ms", "1500"])
    res = run_json(node, "c-vic", [harness.PYTHON, KALOAD, "--to", TO, "--sequence",
                                   "dev.proj1@/silent,dev.proj1", "--timeout", "15"], timeout=60)
    a = res["answers"]
    assert "error" in a[0] and 1.0 <= a[0]["seconds"] < 6, res
    assert a[1].get("pod") == "rl/s-proj1" and res["connects"] == 2, res
    st = relay(node)
    assert st["client_resets"]["response_timeout"] == 1, st
    assert st["clients_destroyed"] >= 1, st


def test_one_pod_cannot_take_the_relay_table(make_node):
    """A pod holding many connections, each with a re-routed request, gets its share of the
    relay; beyond it its connections are reset (counted). Another pod is still served."""
    node = build(make_node, "share", ["--relay-clients-per-pod", "4"])
    t, box = fixtures.in_background(lambda: run_json(
        node, "c-att", [harness.PYTHON, RELAYLOAD, "--to", TO, "--env", "dev.proj1", "--hold", "10",
                        "--seconds", "6"], timeout=60))
    harness.wait_until(lambda: relay(node)["client_resets"]["pod_share"] >= 6, timeout=20,
                       what="the connections beyond the pod's share reset")
    assert relay(node)["clients"] <= 4 + 1, relay(node)
    assert victim(node, 5)  # another pod: served
    t.join(60)
    assert "error" not in box, box
    assert box["result"]["answered"] == 4, box
    harness.wait_until(lambda: relay(node)["clients"] == 0, timeout=10, what="the held clients forgotten")


def test_connection_per_request_reuses_warm_upstreams(make_node):
    """One connection per re-routed request: after the first, each request takes a pooled,
    pre-connected upstream (the pool refills as they are taken); every answer from its own
    environment; a used upstream is never handed to another client; pooled upstreams close when
    unused and when their pod leaves."""
    node = build(make_node, "pool")
    secs = victim(node, 40)
    assert len(secs) == 40
    st = relay(node)
    assert st["pool_taken"] >= 30, st
    assert st["upstreams_opened"] == 40, st  # a bind per client
    assert st["connects"] >= 40, st  # a fresh upstream each
    harness.wait_until(lambda: relay(node)["upstreams_pooled"] == 0, timeout=10,
                       what="the pooled upstreams closed when unused")
    assert relay(node)["closed"]["pool_idle"] >= 1
    # a pod leaving its set takes its pooled upstreams with it
    victim(node, 3)
    assert relay(node)["upstreams_pooled"] >= 1
    node.remove_pod(k("s-proj1"))
    harness.wait_until(lambda: relay(node)["upstreams_pooled"] == 0, timeout=10,
                       what="the pooled upstreams of the removed pod closed")


# ------------------------------------------------------------------ the programs' byte accounts


def _map(node, name):
    return os.path.join(node.pin_dir, "maps", name)


def map_dump(node, name):
    """{key bytes: value bytes} of a pinned map (bpftool)."""
    r = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", _map(node, name)], capture_output=True,
                       text=True, timeout=30, check=True)
    out = {}
    for e in json.loads(r.stdout):
        out[bytes(int(x, 16) for x in e["key"])] = bytes(int(x, 16) for x in e["value"])
    return out


def map_update(node, name, key, value):
    subprocess.run(["bpftool", "map", "update", "pinned", _map(node, name), "key", "hex"] +
                   ["%02x" % b for b in key] + ["value", "hex"] + ["%02x" % b for b in value],
                   check=True, capture_output=True, timeout=30)


def lose_frame(node, client_key, nbytes, sent=0):
    """What a frame refused by the relay socket (ENOMEM under TCP memory pressure) leaves behind:
    the programs counted its bytes for the client (es_relay_clients, `sent` frames more), its pod
    (es_relay_pods) and in all (es_relay_acct), and it never arrives."""
    rc = bytearray(map_dump(node, "es_relay_clients")[client_key])
    s, b, pod = struct.unpack_from("<I4xQQ", rc, 40)
    struct.pack_into("<I4xQ", rc, 40, s + sent, b + nbytes)
    map_update(node, "es_relay_clients", client_key, bytes(rc))
    zero = struct.pack("<I", 0)
    acct = bytearray(map_dump(node, "es_relay_acct")[zero])  # framed, then socket_framed[] by slot
    slot = relay_slot(pod, len(relay(node)["relay_sockets"]))
    for off in (0, 8 + 8 * slot):
        struct.pack_into("<Q", acct, off, struct.unpack_from("<Q", acct, off)[0] + nbytes)
    map_update(node, "es_relay_acct", zero, bytes(acct))
    pk = struct.pack("<Q", pod)
    framed = struct.unpack("<Q", map_dump(node, "es_relay_pods")[pk])[0]
    map_update(node, "es_relay_pods", pk, struct.pack("<Q", framed + nbytes))
    return pod


def accounts_even(node, pod):
    """The bytes framed for the relay, in all, for the pod's relay socket and for the pod, are all
    done with."""
    pk = struct.pack("<Q", pod)
    framed = struct.unpack("<Q", map_dump(node, "es_relay_pods").get(pk, bytes(8)))[0]
    done = struct.unpack("<Q", map_dump(node, "es_relay_pod_done").get(pk, bytes(8)))[0]
    st = relay(node)
    sock = st["relay_sockets"][relay_slot(pod, len(st["relay_sockets"]))]
    return st["inflight_bytes"] == 0 and sock["inflight_bytes"] == 0 and framed == done


def test_frames_counted_but_never_delivered_do_not_hold_the_bounds(make_node):
    """Issue 14: a frame the programs counted that never reaches the relay (its redirect refused
    for memory) must not hold the byte bounds of its client, its pod and the node. Its bytes are
    done with when the client's next frame arrives (its header says how many bytes the kernel had
    framed before it), or, when none comes, a second after the client is given up (the relay's
    lost-frame check resets it). Both shapes are made by hand in the programs' maps."""
    node = build(make_node, "phantom", proj2=True)
    go1, go2 = os.path.join(node.tmp, "go1"), os.path.join(node.tmp, "go2")
    t, box = fixtures.in_background(lambda: run_json(
        node, "c-vic", [harness.PYTHON, KALOAD, "--to", TO, "--sequence",
                        ",".join(["dev.proj1", "@wait:" + go1, "dev.proj2", "@wait:" + go2]),
                        "--timeout", "10"], timeout=90))
    harness.wait_until(lambda: os.path.exists(go1 + ".reached") or not t.is_alive(), timeout=30,
                       what="the client's first answer")
    clients = map_dump(node, "es_relay_clients")
    assert len(clients) == 1, clients
    key = next(iter(clients))
    # a lost frame, then the client's next re-routed request: the gap is done with at once
    pod = lose_frame(node, key, 40000)
    open(go1, "w").close()
    harness.wait_until(lambda: os.path.exists(go2 + ".reached") or not t.is_alive(), timeout=30,
                       what="the client's second answer")
    st = relay(node)
    assert st["bytes_lost"] == 40000 and st["client_resets"]["relay_stream_lost"] == 0, st
    harness.wait_until(lambda: accounts_even(node, pod), timeout=5, what="the lost frame's bytes done with")
    # a lost last frame: nothing follows it; the client is reset, its bytes done with
    lose_frame(node, key, 30000, sent=1)
    harness.wait_until(lambda: relay(node)["bytes_lost"] == 70000, timeout=10,
                       what="the lost last frame's bytes done with")
    assert relay(node)["client_resets"]["relay_stream_lost"] == 1, relay(node)
    harness.wait_until(lambda: accounts_even(node, pod), timeout=5, what="the accounts even")
    open(go2, "w").close()
    t.join(60)
    assert "error" not in box, box
    a = box["result"]["answers"]
    assert [x.get("pod") for x in a] == ["rl/s-proj1", "rl/s-proj2"] and box["result"]["connects"] == 1, box
