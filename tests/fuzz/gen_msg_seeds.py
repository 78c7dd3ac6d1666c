#!/usr/bin/env python3
"""Writes the seed corpus of the sk_msg fuzzer (tests/fuzz/fuzz_msg.c) into tests/fuzz/corpus-msg/.

The input format (all bytes optional: a missing byte reads as 0; sends missing at the end
mean "the rest in one send"):

  4 configuration bytes
    c0: bits 0-1 window (4096, 300, 0, 1000), bit 2 auto-inject, bit 3 pod labelled,
        bit 4 pod opted into the thread context, bit 5 aliases (X-Env) and baggage
        (virtual-env) configured, bit 6 tracing on, bit 7 trace ring buffer full
    c1: bits 0-1 the connection's set (dev, dev.proj1, dev.proj2, dev), bits 2-4 the pod's
        env (dev, dev.proj1, dev.proj1.alice, dev.proj2, other, dev, dev.proj1, dev),
        bit 5 dev.proj2 has backends, bit 6 relay down, bit 7 sends never cross the start
        of a generated request
    c2: bits 0-1 frames the agent may queue (0: no limit), bits 2-4 the thread's env
        (none, dev, dev.proj1, dev.proj1.alice, dev.proj2, dev.unknown.x, other, none),
        bit 5 an upstream for dev.proj1 bound from the start, bit 6 IPv6
    c3: bit 0 the relay's receive memory takes only the first element of one frame (the
        kernel runs the program again on the rest: it must fail, never go anywhere), bit 1
        the service has one backend set (the own pod's responses are not followed), bit 2
        the connection was made while it had one, bit 3 the connection was made by a connect
        hint (es_hints, ES_STEER_F_HINT): to a set with backends other than the one the pod's
        env resolves to, the n-th of them by bits 4-5 (none: no hint; not with bits 1-2),
        bit 6 dev (the default env) has no backends (some requests resolve nowhere), bit 7 a
        pod of the node has the thread context (es_config ES_CFG_F_LOCAL_CTX: requests are
        handed off to their receivers, es_hocache)
  1 byte: number of requests - 1 (modulo 16)
  6 bytes per request (gen_request() in fuzz_msg.c says what each bit means)
  2 bytes per send: size (bits 0-1 class: 1+v, (v+1)*97, a boundary size, the rest;
    v = bits 2-7), plan (bits 0-2 element sizes: one, 1, random, 512, 1000, 1024, 1100,
    4096; at most 8 elements, the last takes the rest; bit 3 coalesce with the held message, bit 4 first element not readable in
    place, bits 5-7 the agent afterwards: catch up, bind upstreams (again for one whose server
    closed it), an upstream's server closes it (es_rsp.fin) or, once it has, it is gone)

Backends exist for dev (unless c3 bit 6), dev.proj1 and (c1 bit 5) dev.proj2; dev is the
default env.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus-msg")

ENV = {None: 0, "dev": 1, "dev.proj1": 2, "dev.proj1.alice": 3, "dev.proj2": 4,
       "dev.unknown.x": 5, "other": 6, "-bad": 7}
KIND = {"get": 0, "post": 1, "chunked": 2, "websocket": 3, "connect": 4, "h2c": 5,
        "malformed": 6, "raw": 7}
EDGES = [1023, 1024, 1025, 4095, 4096, 4097, 5119, 5120, 5121, 1, 2, 31, 32, 1100, 2048, 9000]
PLANS = {"one": 0, "bytes": 1, "random": 2, 512: 3, 1000: 4, 1024: 5, 1100: 6, 4096: 7}


def cfg(window=0, auto=1, labelled=1, threadctx=0, aliases=0, tracing=0, rbfull=0,
        conn=0, pod=0, proj2=1, relay_down=0, align=0, max_frames=0, thread=None,
        prebind=0, v6=0, relay_partial=0, single_set=0, hint=0, hint_pick=0, no_dev_set=0,
        local_ctx=0):
    c0 = window | auto << 2 | labelled << 3 | threadctx << 4 | aliases << 5 | tracing << 6 | rbfull << 7
    c1 = conn | pod << 2 | proj2 << 5 | relay_down << 6 | align << 7
    c2 = max_frames | ENV[thread] << 2 | prebind << 5 | v6 << 6
    c3 = relay_partial | single_set << 1 | hint << 3 | hint_pick << 4 | no_dev_set << 6 | local_ctx << 7
    return bytes([c0, c1, c2, c3])


def req(kind="get", env=None, pad=0, body=0, var=0, v10=0, lf=0, empty=0, smuggle=0,
        env_late=0, expect=0, getcl=0, env_variant=None):
    o0 = KIND[kind] | v10 << 3 | lf << 4 | empty << 5 | smuggle << 6 | env_late << 7
    o1 = (ENV[env] if env_variant is None else env_variant) | expect << 4 | getcl << 5
    return bytes([o0, o1]) + struct.pack("<H", pad) + bytes([body, var])


def send(size="rest", plan="one", coalesce=0, copy=0, agent=0):
    """size: "rest", an int 1..64 (exact), or ("edge", n) for one of EDGES, or ("k", v) for
    (v+1)*97."""
    if size == "rest":
        a = 3
    elif isinstance(size, int):
        assert 1 <= size <= 64
        a = (size - 1) << 2
    elif size[0] == "edge":
        a = EDGES.index(size[1]) << 2 | 2
    else:
        a = size[1] << 2 | 1
    return bytes([a, PLANS[plan] | coalesce << 3 | copy << 4 | agent << 5])


def seed(config, requests, sends=()):
    return config + bytes([len(requests) - 1]) + b"".join(requests) + b"".join(sends)


def pad_for(head):
    """padding that makes a POST head of about `head` bytes"""
    return max(0, head - 80)


SEEDS = {
    # The bug of issue 12: a head over 1 KiB in one send, in a first element over 1 KiB, with a
    # body that looks like a request for another env; then a request of the connection's env.
    "smuggle-1100-cl": seed(cfg(align=1), [
        req("post", "dev.proj1", pad=1020, body=7, smuggle=1),
        req("get", "dev")], [send("rest", 4096), send("rest", "one")]),
    "smuggle-1100-chunked": seed(cfg(align=1), [
        req("chunked", "dev.proj1", pad=1020, body=60, smuggle=1, var=8),
        req("get", "dev")], [send("rest", 4096), send("rest", "one")]),
    "smuggle-1100-1024-regions": seed(cfg(align=1), [
        req("post", "dev.proj1", pad=1020, body=7, smuggle=1),
        req("get", "dev")], [send("rest", 1100), send("rest", "one")]),
    # a head of exactly 1100 bytes in one send (POST head = 87 + padding), its body (a request
    # look-alike) in the next: cut at 1 KiB, the body went to another pod than the head
    "smuggle-1100-body-next-send": seed(cfg(align=1), [
        req("post", "dev.proj1", pad=1013, body=7, smuggle=1),
        req("get", "dev")], [send(("edge", 1100), 4096), send("rest", "one"), send("rest", "one")]),
    # heads of 1000-9000 bytes, one send each (aligned), regions of assorted sizes
    "long-heads-one-send": seed(cfg(align=1), [
        req("post", "dev.proj1", pad=920, body=7, smuggle=1),
        req("post", "dev.proj1", pad=1944, body=7, smuggle=1),
        req("chunked", "dev.proj1", pad=3900, body=60, smuggle=1),
        req("get", "dev.proj1", pad=8900),
        req("get", "dev")],
        [send("rest", 4096), send("rest", 1000), send("rest", 4096, agent=3),
         send("rest", "random"), send("rest", "one")]),
    # the same heads in many sends: held until complete, or too long to hold
    "long-heads-many-sends": seed(cfg(align=1), [
        req("post", "dev.proj1", pad=2900, body=7, smuggle=1),
        req("post", "dev.proj1", pad=8900, body=7, smuggle=1),
        req("get", "dev.proj1")],
        [send(("k", 9), 512)] * 8 + [send(("k", 29), 1024)] * 4 + [send("rest", "one")]),
    # a head written header by header into a held message of many elements
    "corked-tiny-sends": seed(cfg(align=1), [
        req("get", "dev.proj1", pad=200, env_late=1),
        req("get", "dev")],
        [send(16, "one")] * 20 + [send("rest", "one")]),
    # pipelining: two requests for different sets in one send
    "pipelined": seed(cfg(), [
        req("get", "dev.proj1"), req("get", "dev"), req("get", "dev.proj1")],
        [send("rest", "one")]),
    # no header: inserted from the pod's env (auto-inject) or the thread's
    "inject-pod-env": seed(cfg(pod=1, align=1), [
        req("get"), req("post", body=3), req("get", "dev")],
        [send("rest", "one", agent=3)] * 3),
    "inject-thread-env": seed(cfg(threadctx=1, thread="dev.proj1.alice", align=1), [
        req("get"), req("chunked", body=10, var=0), req("get", "dev")],
        [send(20, "one"), send("rest", "one", agent=3), send("rest", "random"), send("rest", "one")]),
    # the slow path, then upstreams bound by the agent; an upstream closes
    "slow-then-kernel": seed(cfg(align=1), [
        req("get", "dev.proj1"), req("post", "dev.proj1", body=40),
        req("get", "dev.proj2"), req("get", "dev.proj1"), req("get", "dev")],
        [send("rest", "one", agent=3), send("rest", 1000, agent=3), send("rest", "one", agent=3),
         send("rest", "one", agent=4), send("rest", "one")]),
    # the relay refuses (queue full, agent down)
    "relay-full": seed(cfg(max_frames=1, align=1), [
        req("get", "dev.proj1"), req("get", "dev.proj1"), req("get", "dev")]),
    "relay-down": seed(cfg(relay_down=1), [req("get", "dev.proj1"), req("get", "dev")]),
    # tunnels and upgrades
    "websocket": seed(cfg(), [req("websocket", "dev.proj1", var=40), req("get", "dev")]),
    "connect": seed(cfg(), [req("connect", "dev.proj1", var=30, smuggle=1)]),
    "h2c": seed(cfg(), [req("h2c", "dev.proj1"), req("get", "dev.proj1")]),
    # what the parser cannot frame, after a re-routed request and on the own connection
    "unframed-after-reroute": seed(cfg(), [
        req("get", "dev.proj1"), req("malformed", "dev", var=0)], [send("rest", "one")]),
    "unframed-own": seed(cfg(), [
        req("get", "dev"), req("malformed", "dev.proj1", var=1)]),
    "raw-after-body": seed(cfg(), [
        req("post", "dev.proj1", body=2), req("raw", body=60, smuggle=1)]),
    # env header variants: aliases, baggage, invalid, unknown, over-long
    "env-variants": seed(cfg(aliases=1, align=1), [
        req("get", env_variant=v) for v in (8, 9, 10, 11, 12, 13, 14, 15, 5, 6, 7, 3)]),
    # an empty line before a request, its CR and LF in different sends
    "crlf-split": seed(cfg(align=1), [
        req("post", "dev.proj1", body=1), req("get", "dev", empty=1)],
        [send("rest", "one"), send(1, "one"), send("rest", "one")]),
    "crlf-split-first": seed(cfg(conn=1, align=1), [req("get", "dev", empty=1)],
        [send(1, "one"), send("rest", "one")]),
    # a request and the start of the next one (another target) in one send, the rest later
    "pipelined-cut": seed(cfg(prebind=1), [
        req("get", "dev.proj1"), req("get", "dev", pad=300)],
        [send(("k", 0), "one"), send("rest", "one")]),
    # LF line ends, HTTP/1.0
    "lf-http10": seed(cfg(window=1), [
        req("get", "dev.proj1", lf=1, v10=1), req("post", "dev.proj2", lf=1, body=4, smuggle=1)]),
    # sendfile-like pages (first element not readable in place), IPv6, tracing on
    "not-readable-v6-trace": seed(cfg(v6=1, tracing=1), [
        req("post", "dev.proj1", pad=1500, body=20)], [send("rest", 4096, copy=1)]),
    # the relay takes a frame's header but not its payload (TCP memory pressure): the rest
    # comes back in a run of its own, which must fail (small and large slow-path requests,
    # with a body whose bytes look like a request for another env)
    "relay-partial-small": seed(cfg(relay_partial=1, align=1), [
        req("post", "dev.proj1", body=40, smuggle=1), req("get", "dev")],
        [send("rest", 512), send("rest", "one")]),
    "relay-partial-large": seed(cfg(relay_partial=1, align=1), [
        req("post", "dev.proj1", pad=1500, body=200, smuggle=1), req("get", "dev.proj1")],
        [send("rest", 1024, agent=1), send("rest", 1000)]),
    "relay-partial-pipelined": seed(cfg(relay_partial=1), [
        req("post", "dev.proj1", body=40, smuggle=1), req("get", "dev.proj1"), req("get", "dev.proj1")],
        [send("rest", 512)]),
    "relay-partial-carry": seed(cfg(relay_partial=1, window=2), [
        req("post", "dev.proj1", pad=1000, body=255, smuggle=1), req("get", "dev")],
        [send(("edge", 9000), 1000), send("rest", "one")]),
    # an own-pod request answered, then one re-routed; on a single-set service too
    "own-then-rerouted": seed(cfg(align=1), [req("get", "dev"), req("get", "dev.proj1")],
        [send("rest", "one", agent=1), send("rest", "one")]),
    "own-then-rerouted-single-set": seed(cfg(align=1, single_set=1), [req("get", "dev"), req("get", "dev.proj1")],
        [send("rest", "one", agent=1), send("rest", "one")]),
    # window 0 (no parse window): the hold limit is 1 KiB
    "window-0": seed(cfg(window=2, align=1), [
        req("get", "dev.proj1", pad=1500), req("get", "dev")],
        [send(("k", 5), 512), send("rest", "one"), send("rest", "one")]),
    # connect hints: the connection went to dev.proj1's set (pod env dev; dev.proj2 has
    # backends too, the first other set is picked) or dev.proj2's (pod env dev.proj1)
    "hint-first-unframed": seed(cfg(hint=1, align=1), [
        req("raw", body=40, smuggle=1), req("get", "dev.proj1")]),
    "hint-long-head": seed(cfg(hint=1, align=1), [
        req("get", pad=8900), req("get", "dev.proj1")],
        [send(("k", 9), 512)] * 8 + [send("rest", "one")]),
    "hint-long-head-own-env": seed(cfg(hint=1, align=1), [
        req("post", "dev.proj1", pad=3000, body=9)], [send("rest", 4096)]),
    "hint-h2c": seed(cfg(hint=1), [req("h2c", "dev.proj1"), req("get", "dev.proj1")]),
    "hint-nowhere": seed(cfg(hint=1, pod=1, no_dev_set=1, align=1), [
        req("get", "other"), req("get", "dev.proj2")]),
    "hint-pass-then-unframed": seed(cfg(hint=1), [
        req("get", "dev.proj1"), req("malformed", "dev.proj1", var=1), req("raw", body=30)]),
    "hint-missed": seed(cfg(hint=1, align=1), [req("get"), req("get", "dev.proj1")],
        [send("rest", "one", agent=3), send("rest", "one")]),
    "hint-empty-lines": seed(cfg(hint=1, align=1), [req("get", "dev.proj1", empty=1),
        req("get", "dev", empty=1)], [send(1, "one"), send("rest", "one"), send(1, "one")]),
    # parse once per hop (es_hocache): requests passed on the connection (its set is dev's), each
    # eligible one with a record - header, inserted header (the pod's env), Content-Length body,
    # padding, an invalid header (no record), chunked (none) - one send each; then pipelined with
    # empty lines in one send; then a node without a pod that has the thread context (no record)
    "handoff": seed(cfg(local_ctx=1, align=1), [
        req("get", "dev"), req("post", "dev", body=20, var=0x35), req("get"),
        req("get", "dev", pad=700, env_late=1), req("get", env_variant=11), req("chunked", "dev", body=9),
        req("post", body=3, lf=1), req("get", "dev", empty=1)],
        [send("rest", "one")] * 8),
    "handoff-pipelined": seed(cfg(local_ctx=1), [
        req("get", "dev"), req("post", "dev", body=4, empty=1), req("get", empty=1),
        req("get", "dev", getcl=1, body=12)], [send("rest", "random")]),
    "handoff-no-local-ctx": seed(cfg(align=1), [req("get", "dev"), req("post", body=5), req("get", "dev")],
        [send("rest", "one")] * 3),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print("wrote %d seeds to %s" % (len(SEEDS), OUT))


if __name__ == "__main__":
    main()
