"""Never wrong, with the runtimes users run (issue 11).

A request is answered by a pod of its own environment's chain, or -- when envsteer cannot know
its environment -- by a pod of its caller's own environment's chain; never by a pod that only
another environment would choose (DESIGN.md, "Semantics"). These tests put real runtimes in
the middle of a chain and classify every answer.

Node "nw" (--default-env dev), namespace nw, addresses 127.1.70.x (pods) / 127.96.70.x
(services), used by no other test file:

    c      127.96.70.3:80  -> c-dev (dev), c-proj1 (dev.proj1), c-proj2 (dev.proj2)
                              podserver.py --keepalive: answers {"pod", "got_header"}
    b-go   127.96.70.11:80 -> b-go    (dev)  Go net/http server + default Transport
    b-node 127.96.70.12:80 -> b-node  (dev)  Node http server + http.Agent({keepAlive})
    b-aio  127.96.70.13:80 -> b-aio   (dev)  aiohttp server + ClientSession
    b-java 127.96.70.14:80 -> b-java  (dev)  JDK HttpServer, fixed pool of 8 threads,
                                             HttpURLConnection          thread-context: on
    b-thr  127.96.70.15:80 -> b-thr   (dev)  ThreadingHTTPServer + a shared pool of
                                             http.client connections    thread-context: on
    (tier "java-v4": the Java tier in b-java with -Djava.net.preferIPv4Stack=true; by default
    the JVM uses AF_INET6 sockets for IPv4 peers, ::ffff:a.b.c.d, on both its server and
    client side -- that is what users run, and "java" tests it)
    g      127.96.70.20:50051 -> g-dev (dev), g-proj1 (dev.proj1)   gRPC (python3-grpcio)
    gb     127.96.70.30:80 -> gb (unlabelled) Node HTTP -> gRPC bridge (@grpc/grpc-js)
    h      127.96.70.40:80 -> h-dev (dev), h-proj1 (dev.proj1)       h2c (Upgrade) servers
    client pods: cl (unlabelled), cl-dev (dev)

Every b-* tier serves GET / by calling c's service address with its runtime's normal pooled
keep-alive client and answering which c pod answered (tests/e2e/tiers/). Mode "fwd": the tier
forwards the incoming X-Virtual-Env header on its call; "plain": it does not. Only the
thread-per-request tiers (Java thread pool, Python threads) are annotated
`envsteer.io/thread-context: "on"`; Go, Node and asyncio serve many requests per thread (or
move a request between threads), so a thread's last request says nothing about the request
being sent.

Per case, 12 concurrent keep-alive clients in pod cl send GET / to the tier's service address
for ~4 s, each request with a random X-Virtual-Env among dev, dev.proj1, dev.proj2 and none.
Every answer is classified:
    correct   the c pod of the request's env chain (untagged: of the tier's own env, dev)
    fallback  the c pod of the tier's own env (dev) for a request of another env
    wrong     anything else
    failed    an error (no answer)
wrong == 0 and failed == 0 always; correct == 100% where the tier forwards the header or
is a thread-per-request tier with the annotation. Fallback counts are printed (pytest -s)
and in assertion messages; ENVSTEER_E2E_REPORT=<file> also appends one JSON line per case.

The gRPC bridge opens ONE channel on its first request, while serving a dev.proj1 request;
gRPC is HTTP/2, so envsteer can only choose its connection at connect(): from an unlabelled
(dev) pod, answers of g-dev are correct or fallback, answers of g-proj1 to anything but
dev.proj1 are wrong. h2c: `curl --http2` from cl-dev, first request (the Upgrade) tagged
dev.proj1, then dev and untagged requests on the same HTTP/2 connection: the connection stays
with one pod, and dev/untagged requests are never answered by h-proj1. (The h2c servers are
tiers/h2c_server.py on python3-h2: nghttpd speaks h2c with prior knowledge only and answers an
Upgrade request with HTTP/2 frames, which curl rejects; Node's http2 has no h2c Upgrade.)

Runtimes: Go (Debian golang-go; built with the standard library only, GOPROXY=off, into a
session temp dir; the build cache is kept under <build dir>/e2e-cache), Node, Java (javac at
test time), Debian's python3 with python3-aiohttp, python3-grpcio, python3-h2, and
@grpc/grpc-js from npm (scripts/npm-deps.sh installs it into $ENVSTEER_NPM_DIR, default
/var/cache/envsteer-npm). A missing runtime is a test failure saying what to install.
"""
import http.client
import json
import os
import shutil
import socket
import subprocess

import pytest

import fixtures
import harness

NS = "nw"
HERE = os.path.dirname(os.path.abspath(__file__))
TIERS_DIR = os.path.join(HERE, "tiers")
LOAD = os.path.join(TIERS_DIR, "load.py")
# the tiers need Debian's packages (aiohttp, grpcio, h2), installed for Debian's python3
SYS_PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else harness.PYTHON
NPM_DIR = os.environ.get("ENVSTEER_NPM_DIR") or "/var/cache/envsteer-npm"
THREAD_CTX = {"envsteer.io/thread-context": "on"}
ENVS = ["dev", "dev.proj1", "dev.proj2", "-"]  # "-": no header
SECONDS = 4.0
CLIENTS = 12
TP = 8080

C_VIP = "127.96.70.3"
C_PODS = [("c-dev", "127.1.70.1", "dev"), ("c-proj1", "127.1.70.2", "dev.proj1"),
          ("c-proj2", "127.1.70.3", "dev.proj2")]
# the middle-tier pods, one service each: (name, pod ip, service ip, thread-per-request)
B_PODS = [
    ("b-go", "127.1.70.11", "127.96.70.11", False),
    ("b-node", "127.1.70.12", "127.96.70.12", False),
    ("b-aio", "127.1.70.13", "127.96.70.13", False),
    ("b-java", "127.1.70.14", "127.96.70.14", True),
    ("b-thr", "127.1.70.15", "127.96.70.15", True),
]
# tier -> the pod it runs in
TIERS = {"go": "b-go", "node": "b-node", "aio": "b-aio", "java": "b-java", "threads": "b-thr",
         "java-v4": "b-java"}
CASES = [(t, m) for t in ("go", "node", "aio", "java", "threads") for m in ("fwd", "plain")]
# The JVM's sockets are AF_INET6 (IPv4 addresses as ::ffff:a.b.c.d) unless
# java.net.preferIPv4Stack is set: the same Java tier on AF_INET sockets tells a problem with
# dual-stack sockets apart from one with the thread pool.
CASES.append(("java-v4", "plain"))
G_VIP, G_PORT = "127.96.70.20", 50051
G_PODS = [("g-dev", "127.1.70.21", "dev"), ("g-proj1", "127.1.70.22", "dev.proj1")]
GB_VIP, GB_IP = "127.96.70.30", "127.1.70.30"
H_VIP = "127.96.70.40"
H_PODS = [("h-dev", "127.1.70.41", "dev"), ("h-proj1", "127.1.70.42", "dev.proj1")]
CL_IP, CL_DEV_IP = "127.1.70.100", "127.1.70.101"


k = fixtures.keyer(NS)


# --------------------------------------------------------------------------- runtimes

def _cache_dir():
    d = os.environ.get("ENVSTEER_E2E_CACHE") or os.path.join(
        os.path.dirname(os.path.abspath(harness.agent_bin())), "e2e-cache")
    os.makedirs(d, exist_ok=True)
    return d


def _need(cmd, pkg):
    path = shutil.which(cmd)
    if not path:
        pytest.fail("%s not found: install %s (scripts/install-deps.sh does)" % (cmd, pkg),
                    pytrace=False)
    return path


def _build(argv, env=None, timeout=300):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        pytest.fail("build failed (rc %d): %s\n%s%s" % (r.returncode, " ".join(argv),
                                                         r.stdout[-3000:], r.stderr[-3000:]),
                    pytrace=False)


@pytest.fixture(scope="session")
def runtimes(tmp_path_factory, e2e_prerequisites):
    """Checks every runtime, builds the Go tier and the Java tier once per session;
    returns {tier: argv prefix (IP PORT TO MODE POD follow)}."""
    go, node, javac, java = (_need("go", "golang-go"), _need("node", "nodejs"),
                             _need("javac", "default-jdk-headless"),
                             _need("java", "default-jdk-headless"))
    r = subprocess.run([SYS_PY, "-c", "import aiohttp, grpc, h2"], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        pytest.fail("%s lacks python3-aiohttp / python3-grpcio / python3-h2 (run "
                    "scripts/install-deps.sh): %s" % (SYS_PY, r.stderr.strip()[-500:]),
                    pytrace=False)
    if not os.path.isfile(os.path.join(NPM_DIR, "node_modules", "@grpc", "grpc-js",
                                       "package.json")):
        pytest.fail("@grpc/grpc-js is not installed in %s: run scripts/npm-deps.sh "
                    "(ENVSTEER_NPM_DIR sets the directory)" % NPM_DIR, pytrace=False)
    out = str(tmp_path_factory.mktemp("tiers"))
    cache = _cache_dir()
    env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", GOTOOLCHAIN="local",
               GO111MODULE="on", GOCACHE=os.path.join(cache, "go-build"),
               GOPATH=os.path.join(cache, "gopath"), CGO_ENABLED="0")
    gobin = os.path.join(out, "go_tier")
    _build([go, "build", "-o", gobin, os.path.join(TIERS_DIR, "go_tier.go")], env=env)
    jdir = os.path.join(out, "java")
    _build([javac, "-d", jdir, os.path.join(TIERS_DIR, "JavaTier.java")])
    return {
        "go": [gobin],
        "node": [node, os.path.join(TIERS_DIR, "node_tier.js")],
        "aio": [SYS_PY, os.path.join(TIERS_DIR, "aio_tier.py")],
        "java": [java, "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 "-cp", jdir, "JavaTier"],
        "java-v4": [java, "-Djava.net.preferIPv4Stack=true", "-Xmx128m", "-XX:+UseSerialGC",
                    "-XX:TieredStopAtLevel=1", "-cp", jdir, "JavaTier"],
        "threads": [SYS_PY, os.path.join(TIERS_DIR, "threads_tier.py")],
        "bridge": ["env", "NODE_PATH=" + os.path.join(NPM_DIR, "node_modules"), node,
                   os.path.join(TIERS_DIR, "grpc_bridge.js")],
        "grpc": [SYS_PY, os.path.join(TIERS_DIR, "grpc_server.py")],
        "h2c": [SYS_PY, os.path.join(TIERS_DIR, "h2c_server.py")],
    }


# --------------------------------------------------------------------------- processes

def _http_ok(ip, port, path="/healthz"):
    c = http.client.HTTPConnection(ip, port, timeout=1.0)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        c.close()


def _tcp_ok(ip, port):
    try:
        with socket.create_connection((ip, port), timeout=1.0):
            return True
    except OSError:
        return False


def start_in_pod(node, name, argv, ready, timeout=30.0):
    """Run argv in pod `name` (its cgroup, like the pod's own server), by PID: stopped by
    node.stop_process() or node.close(). ready(): bounded readiness probe from this (host,
    never steered) process."""
    pod = node.pod(k(name))
    log = "tier-%s.log" % name
    proc = node._popen(list(argv), pod.cgroup_dir, log, pod.netns)

    def up():
        if proc.poll() is not None:
            return "exited"
        return ready()

    st = harness.wait_until(up, timeout, 0.1, "%s ready" % name)
    if st == "exited":
        node.stop_process(proc)
        pytest.fail("%s exited (rc %s):\n%s" % (name, proc.returncode, harness._read_file(
            os.path.join(node.log_dir, log), 4000)), pytrace=False)
    return proc


def run_load(node, vip, first=None, seconds=SECONDS, client="cl"):
    argv = [harness.PYTHON, LOAD, "--to", "%s:80" % vip, "--clients", str(CLIENTS),
            "--seconds", str(seconds), "--envs", ",".join(ENVS), "--max-requests", "50000",
            "--timeout", "10"]
    if first is not None:
        argv += ["--first", first]
    r = node.run_in_pod(k(client), argv, timeout=seconds + 60)
    lines = (r.stdout or "").strip().splitlines()
    assert r.returncode == 0 and lines, (r.returncode, r.stdout)
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- classification

def classify(node, svc, tier_pod, res, own_env="dev"):
    """Counts correct / fallback / wrong / failed over a load.py result, per env too."""
    def pods(env):
        return set(node.expected(k(svc), env)[2])

    fallback = pods(own_env)
    total = {"correct": 0, "fallback": 0, "wrong": 0, "failed": res["failed"]}
    per_env = {e: {"correct": 0, "fallback": 0, "wrong": 0} for e in ENVS}
    wrong = []
    for env, tier, backend, got, bgot, n in res["answers"]:
        right = pods(own_env if env == "-" else env)
        if tier == k(tier_pod) and backend in right:
            cls = "correct"
        elif tier == k(tier_pod) and backend in fallback:
            cls = "fallback"
        else:
            cls = "wrong"
            wrong.append({"env": env, "tier": tier, "backend": backend, "tier_got": got,
                          "backend_got": bgot, "n": n})
        total[cls] += n
        per_env.setdefault(env, {"correct": 0, "fallback": 0, "wrong": 0})[cls] += n
    total["answered"] = total["correct"] + total["fallback"] + total["wrong"]
    return total, per_env, wrong


def report(case, total, per_env, wrong, res, extra=None):
    line = ("never-wrong %-16s %5d requests: correct %5d  fallback %5d  wrong %5d  failed %3d"
            % (case, res["requests"], total["correct"], total["fallback"], total["wrong"],
               total["failed"]))
    envs = "  ".join("%s=%d/%d/%d" % (e, c["correct"], c["fallback"], c["wrong"])
                     for e, c in per_env.items())
    print("\n" + line + "\n    per env (correct/fallback/wrong): " + envs)
    path = os.environ.get("ENVSTEER_E2E_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"case": case, "requests": res["requests"], **total,
                                "per_env": per_env, **(extra or {})}) + "\n")
    return ("%s\n  per env: %s\n  wrong answers: %s\n  errors: %s\n  answers [env, tier, "
            "backend, header the tier got, header the backend got, count]: %s"
            % (line, json.dumps(per_env), json.dumps(wrong[:10]), json.dumps(res.get("errors")),
               json.dumps(res["answers"][:40])))


# --------------------------------------------------------------------------- the node

@pytest.fixture(scope="module")
def nw(runtimes):
    node = harness.Node("nw", default_env="dev")
    try:
        node.add_service(NS, "c", C_VIP, 80, TP, protocols=("TCP",))
        for name, ip, env in C_PODS:
            node.add_pod(NS, name, ip, app="c", env=env, port=TP)
        for name, ip, vip, threaded in B_PODS:
            node.add_service(NS, name, vip, 80, TP, protocols=("TCP",))
            node.add_pod(NS, name, ip, app=name, env="dev", port=TP,
                         annotations=THREAD_CTX if threaded else None)
        node.add_service(NS, "g", G_VIP, G_PORT, G_PORT, protocols=("TCP",))
        for name, ip, env in G_PODS:
            node.add_pod(NS, name, ip, app="g", env=env, port=G_PORT)
        node.add_service(NS, "gb", GB_VIP, 80, TP, protocols=("TCP",))
        node.add_pod(NS, "gb", GB_IP, app="gb", port=TP)  # unlabelled: dev by --default-env
        node.add_service(NS, "h", H_VIP, 80, TP, protocols=("TCP",))
        for name, ip, env in H_PODS:
            node.add_pod(NS, name, ip, app="h", env=env, port=TP)
        node.add_pod(NS, "cl", CL_IP, app="cl", port=TP)
        node.add_pod(NS, "cl-dev", CL_DEV_IP, app="cl", env="dev", port=TP)
        node.write_manifests()
        for name, _, _ in C_PODS:
            node.start_server(k(name), args=["--keepalive"])
        for name, ip, _ in G_PODS:
            start_in_pod(node, name, runtimes["grpc"] + [ip, str(G_PORT), k(name)],
                         lambda ip=ip: _tcp_ok(ip, G_PORT))
        for name, ip, _ in H_PODS:
            start_in_pod(node, name, runtimes["h2c"] + [ip, str(TP), k(name)],
                         lambda ip=ip: _http_ok(ip, TP))
        node.start_agent()
        yield node
    finally:
        node.close()


@pytest.mark.parametrize("tier,mode", CASES, ids=["%s-%s" % c for c in CASES])
def test_middle_tier_never_wrong(nw, runtimes, tier, mode):
    name, ip, vip, threaded = next(p for p in B_PODS if p[0] == TIERS[tier])
    proc = start_in_pod(nw, name, runtimes[tier] + [ip, str(TP), "%s:80" % C_VIP, mode, k(name)],
                        lambda: _http_ok(ip, TP))
    try:
        res = run_load(nw, vip)
    finally:
        nw.stop_process(proc)
    total, per_env, wrong = classify(nw, "c", name, res)
    msg = report("%s/%s" % (tier, mode), total, per_env, wrong, res,
                 {"thread_context": threaded})
    assert res["requests"] >= 40 and res["unfinished"] == 0, msg
    assert all(sum(c.values()) > 0 for c in per_env.values()), msg  # every env was sent
    assert total["wrong"] == 0, "WRONG answers\n" + msg
    assert total["failed"] == 0, "failed requests\n" + msg
    if mode == "fwd" or threaded:
        hint = ""
        if tier == "java" and mode == "plain":
            hint = ("\n  (java-v4 is the same tier on AF_INET sockets; if it passes, the JVM's "
                    "AF_INET6 sockets carrying IPv4 (::ffff:a.b.c.d) are what loses the request's "
                    "env: compare the header_found counter)")
        assert total["correct"] == total["answered"] == res["requests"], \
            "not all correct (%s)\n%s%s" % ("forwards the header" if mode == "fwd" else
                                            "thread-per-request, thread-context on", msg, hint)


@pytest.mark.parametrize("mode", ["fwd", "plain"])
def test_grpc_bridge_one_channel_never_wrong(nw, runtimes, mode):
    """The bridge's one gRPC channel is opened while it serves a dev.proj1 request; then
    random envs. With or without the env as gRPC metadata: no answer of g-proj1 to a request
    of another env (the channel's connection must not take the first request's env)."""
    proc = start_in_pod(nw, "gb", runtimes["bridge"] + [GB_IP, str(TP), "%s:%d" % (G_VIP, G_PORT),
                                                         mode, k("gb")],
                        lambda: _http_ok(GB_IP, TP))
    try:
        res = run_load(nw, GB_VIP, first="dev.proj1")
    finally:
        nw.stop_process(proc)
    total, per_env, wrong = classify(nw, "g", "gb", res)
    first = res.get("first") or {}
    msg = report("grpc-bridge/%s" % mode, total, per_env, wrong, res,
                 {"first": first.get("backend")})
    msg += "\n  first answer: %s" % json.dumps(first)
    assert first.get("opened_by") == "dev.proj1", msg  # the channel came from that request
    assert res["requests"] >= 40 and res["unfinished"] == 0, msg
    assert total["wrong"] == 0, "WRONG answers\n" + msg
    assert total["failed"] == 0, "failed requests\n" + msg


def test_h2c_upgrade_stays_on_its_connection(nw):
    """curl --http2 (HTTP/1.1 Upgrade: h2c) from a dev pod: the Upgrade request is tagged
    dev.proj1, then a dev and an untagged request ride the same HTTP/2 connection. envsteer
    cannot route HTTP/2 requests one by one, so the connection stays with one pod: the
    upgrade request's answer is h-proj1 (correct) or h-dev (fallback), the later ones must
    not come from h-proj1 (wrong)."""
    url = "http://%s/" % H_VIP
    steps = [("dev.proj1", url), ("dev", url), ("-", url + "again")]
    counts = {"correct": 0, "fallback": 0, "wrong": 0, "failed": 0}
    rounds = []
    for _ in range(5):
        argv = ["curl", "-sS", "--max-time", "10", "--http2"]
        for i, (env, u) in enumerate(steps):
            if i:
                argv += ["--next", "--http2"]
            if env != "-":
                argv += ["-H", "X-Virtual-Env: " + env]
            argv += ["-w", "\\n@ %{http_version} %{num_connects}\\n", u]
        r = nw.run_in_pod(k("cl-dev"), argv, timeout=40)
        answers, meta = [], []
        for line in r.stdout.splitlines():
            if line.startswith("@ "):
                meta.append(line.split()[1:])
            elif line.strip():
                try:
                    answers.append(json.loads(line))
                except ValueError:
                    answers.append({"raw": line})
        rounds.append({"rc": r.returncode, "answers": answers, "meta": meta})
        for i, (env, _) in enumerate(steps):
            a = answers[i] if i < len(answers) else {}
            m = meta[i] if i < len(meta) else ["?", "?"]
            pod = a.get("pod")
            right = set(nw.expected(k("h"), "dev" if env == "-" else env)[2])
            if pod is None or a.get("proto") != "h2c" or m[0] != "2":
                counts["failed"] += 1
            elif pod in right:
                counts["correct"] += 1
            elif pod in nw.expected(k("h"), "dev")[2]:
                counts["fallback"] += 1
            else:
                counts["wrong"] += 1
    line = ("never-wrong h2c-upgrade       %5d requests: correct %5d  fallback %5d  wrong %5d"
            "  failed %3d" % (3 * len(rounds), counts["correct"], counts["fallback"],
                              counts["wrong"], counts["failed"]))
    print("\n" + line)
    path = os.environ.get("ENVSTEER_E2E_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"case": "h2c-upgrade", **counts}) + "\n")
    msg = "%s\n  rounds: %s" % (line, json.dumps(rounds)[:6000])
    assert counts["wrong"] == 0, "WRONG answers\n" + msg
    assert counts["failed"] == 0, "failed requests\n" + msg
    for rd in rounds:
        # one connection (the upgraded one) carried all three requests, and stayed with one pod
        assert [m[1] for m in rd["meta"]] == ["1", "0", "0"], msg
        assert len({a.get("pod") for a in rd["answers"]}) == 1, msg
