"""The relay under attack (issue 14): a slow-reading upstream fed streamed POSTs by an
attacker pod while a victim pod's re-routed requests are timed.

The attack drives the node's TCP memory past tcp_mem[1]; the kernel then delivers relay frames
in part (bpf_tcp_ingress: the relay socket's memory schedule fails after the header) and frames
the rest again. Until the relay ended a cut frame with the previous key at the first header
inside it, such a frame swallowed the frames behind it and a victim whose frame was among them
was reset 1-2 s later (failed 3 of 4 runs). scripts/relay-stress.sh [RUNS] runs it repeatedly."""
import signal
import time

from test_relay import (RELAYLOAD, TO, build, cgroup_id, p99, relay, relay_slot, rss_kib, run_json,  # noqa: F401
                        victim)
import fixtures
import harness


def test_slow_server_on_one_client_does_not_delay_another(make_node):
    """A slow-reading upstream fed streamed POSTs by an attacker: the victim's re-routed
    requests (each through the relay) keep their unloaded latency; the attacker's queues stop
    at their bounds (counted); the agent's memory and the relay's in-flight bytes stay bounded;
    SIGTERM still stops the agent within 5 s."""
    # One relay socket: victim and attacker always share it (with several, whether they do
    # depends on their cgroup ids' hash; a shared socket once refused the victim when its bound
    # was one pod's), so the pod bounds alone must keep the victim's share.
    node = build(make_node, "slow", ["--relay-sockets", "1", "--relay-client-bytes", str(1 << 20),
                                     "--relay-pod-bytes", str(2 << 20), "--relay-total-bytes", str(8 << 20)])
    victim(node, 10)  # warm up
    unloaded = victim(node)
    rss0 = rss_kib(node.agent.pid)
    seconds = 20
    t, box = fixtures.in_background(lambda: run_json(
        node, "c-att", [harness.PYTHON, RELAYLOAD, "--to", TO, "--env", "dev.proj1", "--attack", "12",
                        "--seconds", str(seconds)], timeout=seconds + 40))
    time.sleep(3)  # the attackers' queues fill
    samples = []
    loaded = []
    victim_errors = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds - 8:
        st = relay(node)
        samples.append((st["inflight_bytes"], st["queued_bytes"]))
        loaded += victim(node, 10, victim_errors)
    rss1 = rss_kib(node.agent.pid)
    st = relay(node)
    counters = node.counters()
    # Known kernel issue (README, limits): under such streams the kernel now and then delivers
    # the rest of a frame without its header; the relay resets the client it belongs to
    # (counted: relay_stream_lost) and finds the next frame by its keyed header. Should a
    # victim's frame be the one, the victim sees a reset at once: never a hang, never a wrong
    # answer.
    lost = st["client_resets"]["relay_stream_lost"]
    assert all("timed out" not in e and "after 0.0" in e for e in victim_errors), victim_errors
    assert len(victim_errors) <= lost, (victim_errors, lost)
    assert len(loaded) >= 0.9 * (len(loaded) + len(victim_errors)), victim_errors
    # the victim is not delayed: within 2x of its unloaded p99 (20 ms floor against timer noise)
    assert p99(loaded) <= 2 * max(p99(unloaded), 0.020), (sorted(unloaded)[-3:], sorted(loaded)[-5:])
    # the attackers hit their bounds (their sends fail, counted) instead of growing the agent
    refused = counters["relay_refused_client_bytes"] + counters["relay_refused_pod_bytes"]
    assert refused > 0, counters
    assert counters["relay_refused_total_bytes"] == 0, counters  # the pod's share stopped it first
    assert max(i for i, _ in samples) <= (2 << 20) + (1 << 20), samples
    assert max(q for _, q in samples) <= 2 << 20, samples
    assert rss1 - rss0 < 40 * 1024, (rss0, rss1)
    # SIGTERM under attack: the agent is gone within 5 s
    t_stop = time.monotonic()
    assert node.stop_agent(signal.SIGTERM, timeout=5.0) == 0
    assert time.monotonic() - t_stop < 5.0
    t.join(seconds + 60)
    assert "error" not in box, box
    # what the attacker saw: its sends failed (EACCES: refused by a bound), or waited
    conns = box["result"]["conns"]
    assert len(conns) == 12 and sum(c["failed"] for c in conns) > 0, conns
    assert all(e == 13 for c in conns for e in c["errors"]), conns  # EACCES: refused by a bound
    assert all(c["sent_max"] < 64 << 20 for c in conns), conns
    assert st["bounds"]["bytes_per_pod"] == 2 << 20, st


def test_a_pod_filling_its_relay_socket_does_not_delay_a_pod_on_another(make_node):
    """Law 2: the programs queue a pod's frames on the relay socket of its slot (es_relay_slot of
    its cgroup id), each socket bounded. An attacker pod fills its socket (streamed tagged bodies
    into a slow-reading upstream); a victim pod on another socket is neither delayed (p99 within
    2x of unloaded) nor reset, and the status shows each pod's frames and bytes on its own
    socket."""
    n = 4
    node = build(make_node, "sockets", ["--relay-sockets", str(n), "--relay-client-bytes", str(1 << 20),
                                        "--relay-pod-bytes", str(2 << 20), "--relay-total-bytes", str(8 << 20)],
                 extra_clients=7)
    st = relay(node)
    # a socket holds two full pods (a pod sharing the attacker's socket keeps its share), at most the total
    assert len(st["relay_sockets"]) == n and st["bounds"]["bytes_per_socket"] == 4 << 20, st
    assert len({s["cookie"] for s in st["relay_sockets"]}) == n and all(s["cookie"] for s in st["relay_sockets"])
    att = relay_slot(cgroup_id(node, "c-att"), n)
    others = [p for p in ["c-vic"] + ["c-v%d" % i for i in range(1, 8)]
              if relay_slot(cgroup_id(node, p), n) != att]
    assert others, "eight client pods all on the attacker's socket"
    vic = others[0]
    vs = relay_slot(cgroup_id(node, vic), n)

    def frames():
        return [s["frames"] for s in relay(node)["relay_sockets"]]

    # the victim's frames are on its slot's socket, and only there
    f0 = frames()
    victim(node, 10, pod=vic)
    f1 = frames()
    assert f1[vs] - f0[vs] >= 10 and all(f1[i] == f0[i] for i in range(n) if i != vs), (vs, f0, f1)
    unloaded = victim(node, pod=vic)
    seconds = 20
    t, box = fixtures.in_background(lambda: run_json(
        node, "c-att", [harness.PYTHON, RELAYLOAD, "--to", TO, "--env", "dev.proj1", "--attack", "12",
                        "--seconds", str(seconds)], timeout=seconds + 40))
    time.sleep(3)  # the attacker's socket fills
    samples, loaded, victim_errors = [], [], []
    fa = frames()
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds - 8:
        socks = relay(node)["relay_sockets"]
        samples.append((socks[att]["inflight_bytes"], socks[vs]["inflight_bytes"]))
        loaded += victim(node, 10, victim_errors, pod=vic)
    fb = frames()
    st = relay(node)
    counters = node.counters()
    t.join(seconds + 60)
    assert "error" not in box, box
    # the victim: no reset, no timeout, and not delayed (20 ms floor against timer noise)
    assert victim_errors == [], victim_errors
    assert p99(loaded) <= 2 * max(p99(unloaded), 0.020), (sorted(unloaded)[-3:], sorted(loaded)[-5:])
    # the attacker filled its own socket up to its pod's bound; the victim's held only its requests
    assert max(a for a, _ in samples) >= 1 << 20, samples
    # (the status's in-flight figure subtracts the done bytes of the relay's last stats snapshot:
    # it may lag the pod's bound by what was forwarded since, as in the test above)
    assert max(a for a, _ in samples) <= (2 << 20) + (1 << 20), samples
    assert max(v for _, v in samples) < 64 << 10, samples
    assert fb[att] > fa[att] and fb[vs] - fa[vs] >= len(loaded), (att, vs, fa, fb, len(loaded))
    refused = counters["relay_refused_client_bytes"] + counters["relay_refused_pod_bytes"]
    assert refused > 0, counters
    assert counters["relay_refused_total_bytes"] == 0, counters
    assert st["bounds"]["bytes_per_socket"] == 4 << 20, st
