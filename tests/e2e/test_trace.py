"""`envsteer trace` and the decision metrics of /metrics.

Module node "trc" (--default-env dev):
    s  127.96.40.1:80 -> s-dev (dev), s-proj1 (dev.proj1)
    t  127.96.40.2:80 -> t-off (dev, not ready): every connect to t is refused
    callers c-dev (dev), c-proj1 (dev.proj1), c-alice (dev.proj1.alice: falls back to dev.proj1)
    m  (dev) calls other services itself: the request-env (thread) case
"""
import os
import re
import time

import pytest

import fixtures
import harness
from harness import http_request, wait_until

NS = "trc"
S_VIP, T_VIP, PORT, TP = "127.96.40.1", "127.96.40.2", 80, 8080


k = fixtures.keyer(NS)


@pytest.fixture(scope="module")
def trc(e2e_prerequisites):
    node = harness.Node("trc", default_env="dev")
    try:
        # s promises one request per connection, so a connect() from m's thread takes the
        # request's env (m is thread-per-request: it opts into the thread context)
        fixtures.populate(
            node, NS,
            services=[("s", S_VIP, {"port": PORT, "target_port": TP,
                                    "annotations": {"envsteer.io/connection-per-request": "true"}}),
                      ("t", T_VIP, {"port": PORT, "target_port": TP})],
            pods=[("s-dev", "127.1.40.1", "s", "dev"), ("s-proj1", "127.1.40.2", "s", "dev.proj1"),
                  ("t-off", "127.1.40.3", "t", "dev", {"ready": False}),
                  ("m", "127.1.40.4", "m", "dev", {"annotations": {"envsteer.io/thread-context": "on"}}),
                  ("c-dev", "127.1.40.101", "client", "dev"), ("c-proj1", "127.1.40.102", "client", "dev.proj1"),
                  ("c-alice", "127.1.40.103", "client", "dev.proj1.alice")],
            servers=("s-dev", "s-proj1", "m"), port=TP)
        node.start_agent()
        yield node
    finally:
        node.close()


Trace = fixtures.Trace


def metric(node, name, labels=None):
    """Value of one sample of /metrics (0 when absent)."""
    return fixtures.metric(node, name, labels, default=0)


def request_ok(node, caller, vip, pod):
    r = node.request(k(caller), vip, PORT)
    assert r["ok"] and r["answer"]["pod"] == k(pod), r


def test_connect_decisions_with_their_fields(trc):
    # each request: a connect decision, then the request's own decision (request-pass)
    tr = Trace(trc, "--json", "--service", k("s"), "--count", "6", "--duration", "20")
    request_ok(trc, "c-proj1", S_VIP, "s-proj1")
    request_ok(trc, "c-alice", S_VIP, "s-proj1")
    request_ok(trc, "c-dev", S_VIP, "s-dev")
    all_ev = tr.events()
    assert sorted(e["kind"] for e in all_ev if e["kind"].startswith("request-")) == ["request-pass"] * 3, all_ev
    ev = [e for e in all_ev if not e["kind"].startswith("request-")]
    assert len(ev) == 3, all_ev
    by_pod = {e["pod"]: e for e in ev}
    assert set(by_pod) == {k("c-proj1"), k("c-alice"), k("c-dev")}, ev
    p = by_pod[k("c-proj1")]
    assert p["kind"] == "steered" and p["service"] == k("s") and p["frontend"] == "%s:80/TCP" % S_VIP
    assert p["env_source"] == "pod" and p["env_requested"] == "dev.proj1" and p["pod_env"] == "dev.proj1"
    assert p["env_resolved"] == "dev.proj1" and p["level"] == 0
    assert p["backend"] == "127.1.40.2:8080" and p["backend_pod"] == k("s-proj1")
    assert p["thread_env"] == "" and p["pid"] > 0 and p["cgroup_id"] > 0
    a = by_pod[k("c-alice")]
    assert a["kind"] == "fallback" and a["env_requested"] == "dev.proj1.alice", a
    assert a["env_resolved"] == "dev.proj1" and a["level"] == 1 and a["backend_pod"] == k("s-proj1"), a
    d = by_pod[k("c-dev")]
    # the caller's own env is the default env: "default" as its source, resolved at its own level
    assert d["kind"] == "steered" and d["env_source"] == "default" and d["backend_pod"] == k("s-dev"), d
    for e in ev:
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", e["time"]), e


def test_refusal_is_traced_and_counted(trc):
    before = metric(trc, "envsteer_steering_decisions_total",
                    {"service": k("t"), "env": "dev.proj1", "outcome": "refused", "level": "0"})
    tr = Trace(trc, "--json", "--service", k("t"), "--count", "1", "--duration", "20")
    r = trc.request(k("c-proj1"), T_VIP, PORT)
    assert not r["ok"] and r["errno"] == "ECONNREFUSED", r
    (e,) = tr.events()
    assert e["kind"] == "refused" and e["pod"] == k("c-proj1") and e["service"] == k("t"), e
    assert e["backend"] == "" and e["env_resolved"] == "" and e["env_requested"] == "dev.proj1", e
    after = metric(trc, "envsteer_steering_decisions_total",
                   {"service": k("t"), "env": "dev.proj1", "outcome": "refused", "level": "0"})
    assert after == before + 1


def test_filters(trc):
    # --env dev: decisions whose requested, resolved, thread or pod env is dev; c-proj1's are not
    tr = Trace(trc, "--json", "--env", "dev", "--service", k("s"), "--count", "2", "--duration", "20")
    for _ in range(3):
        request_ok(trc, "c-proj1", S_VIP, "s-proj1")
    request_ok(trc, "c-dev", S_VIP, "s-dev")
    request_ok(trc, "c-proj1", S_VIP, "s-proj1")
    request_ok(trc, "c-dev", S_VIP, "s-dev")
    ev = tr.events()
    assert [e["pod"] for e in ev] == [k("c-dev")] * 2, ev
    # --pod matches the chosen pod too
    tr = Trace(trc, "--json", "--pod", k("s-proj1"), "--count", "2", "--duration", "20")
    request_ok(trc, "c-dev", S_VIP, "s-dev")
    request_ok(trc, "c-alice", S_VIP, "s-proj1")
    request_ok(trc, "c-proj1", S_VIP, "s-proj1")
    ev = tr.events()
    assert [e["pod"] for e in ev] == [k("c-alice"), k("c-proj1")], ev
    assert all(e["backend_pod"] == k("s-proj1") for e in ev), ev


def test_text_output(trc):
    tr = Trace(trc, "--pod", k("c-alice"), "--count", "1", "--duration", "20")
    request_ok(trc, "c-alice", S_VIP, "s-proj1")
    out = tr.finish()
    lines = [l for l in out.splitlines() if l.strip()]
    assert len(lines) == 1, out
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{6} fallback trc/c-alice -> trc/s \(127\.96\.40\.1:80/TCP\) "
                    r"env dev\.proj1\.alice \[pod\] -> dev\.proj1 level 1 -> 127\.1\.40\.2:8080 trc/s-proj1$",
                    lines[0]), lines[0]
    assert "rate limit 100/s per CPU" in tr.text(err=True)


def test_thread_request_env_in_trace(trc):
    """A request tagged dev.proj1.zed enters m; m's own call to s is traced with the thread's env."""
    tr = Trace(trc, "--json", "--pod", k("m"), "--count", "1", "--duration", "20")
    req = http_request("/call?to=%s:%d" % (S_VIP, PORT), headers=[("X-Virtual-Env", "dev.proj1.zed")])
    r = trc.session(None, "127.1.40.4", [{"pieces": [req]}], port=TP)
    assert r["ok"], r
    (e,) = tr.events()
    assert e["pod"] == k("m") and e["pod_env"] == "dev", e
    assert e["env_source"] == "request" and e["thread_env"] == "dev.proj1.zed", e
    # dev.proj1.zed is unknown: the walk starts at dev.proj1 with one level skipped
    assert e["env_requested"] == "dev.proj1" and e["env_resolved"] == "dev.proj1", e
    assert e["kind"] == "fallback" and e["level"] == 1 and e["backend_pod"] == k("s-proj1"), e


def test_rate_limit_bounds_output_and_traffic_is_untouched(trc):
    rl_before = metric(trc, "envsteer_trace_events_total", {"result": "rate_limited"})
    t0 = time.monotonic()
    tr = Trace(trc, "--json", "--rate", "5", "--duration", "4")
    loop = trc.start_loop(k("c-proj1"), S_VIP, PORT, count=400, duration=2.0)
    res = loop.result()
    ev = tr.events()
    elapsed = time.monotonic() - t0
    assert res["attempts"] == 400 and res["failures"] == 0 and res["pods"] == {k("s-proj1"): 400}, res
    ncpu = os.cpu_count()
    # per CPU: a burst of 5, then 5/s
    assert 5 <= len(ev) <= ncpu * (5 + 5 * elapsed), (len(ev), elapsed)
    assert metric(trc, "envsteer_trace_events_total", {"result": "rate_limited"}) >= rl_before + 400 - len(ev)


def test_nothing_is_emitted_without_a_client(trc):
    wait_until(lambda: metric(trc, "envsteer_trace_clients") == 0, 10, what="no trace client")
    emitted = metric(trc, "envsteer_trace_events_total", {"result": "emitted"})
    limited = metric(trc, "envsteer_trace_events_total", {"result": "rate_limited"})
    for _ in range(3):
        request_ok(trc, "c-proj1", S_VIP, "s-proj1")
    assert metric(trc, "envsteer_trace_events_total", {"result": "emitted"}) == emitted
    assert metric(trc, "envsteer_trace_events_total", {"result": "rate_limited"}) == limited


def test_decision_metrics_by_service_env_and_depth(trc):
    lab = {"service": k("s"), "env": "dev.proj1", "outcome": "steered", "level": "0"}
    fb = {"service": k("s"), "env": "dev.proj1", "outcome": "fallback", "level": "1"}
    own0, fb0 = metric(trc, "envsteer_steering_decisions_total", lab), metric(trc, "envsteer_steering_decisions_total", fb)
    for _ in range(3):
        request_ok(trc, "c-proj1", S_VIP, "s-proj1")
    for _ in range(2):
        request_ok(trc, "c-alice", S_VIP, "s-proj1")
    assert metric(trc, "envsteer_steering_decisions_total", lab) == own0 + 3
    assert metric(trc, "envsteer_steering_decisions_total", fb) == fb0 + 2
    code, body = trc.admin_get("/metrics")
    for family in ("envsteer_header_parse_total", "envsteer_headers_inserted_total", "envsteer_map_entries",
                   "envsteer_map_capacity", "envsteer_last_sync_age_seconds", "envsteer_ready",
                   "envsteer_sync_failures_total", "envsteer_pooled_connection_mismatches_total"):
        assert "# TYPE %s " % family in body, family
    assert metric(trc, "envsteer_map_entries", {"map": "es_frontends"}) == 4  # TCP and UDP
    assert metric(trc, "envsteer_map_entries", {"map": "es_pods"}) == 7
    assert metric(trc, "envsteer_ready") == 1
    assert 0 <= metric(trc, "envsteer_last_sync_age_seconds") < 3600


def test_trace_without_agent_fails_clearly(trc):
    r = trc.cli("trace", "--admin-socket", os.path.join(trc.tmp, "no-agent.sock"), "--count", "1")
    assert r.returncode == 1 and "agent not reachable" in r.stderr, r
