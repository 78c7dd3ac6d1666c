"""The agent's container image, built for real (scripts/image.sh) and run the way
`kubectl apply -k daemonset/` runs it (issue 19).

The pod comes from the rendered manifests (`kubectl kustomize daemonset/`), translated into
`podman run` command lines by kube2podman.py: the init container mounts bpffs and propagates
the mount back to the "host", then the agent container runs with the DaemonSet's security
context, capabilities, volumes, args, env and resources. What stands in for the node:

- its bpffs: a directory of the test (a shared bind mount, so that the init container's
  Bidirectional mount reaches it) mapped to the hostPath /sys/fs/bpf: the init container
  mounts a fresh bpffs there, the pins of this test live in it and nowhere else;
- its cgroups: the hostPath /sys/fs/cgroup is this machine's, as it is (read-only in the
  container), and the pods are in kubelet's systemd layout
  (kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice) below the harness
  node's subtree, which the test's overlay names as cgroupRoot (a real node's kubepods.slice
  is at the root: the overlay's one setting besides the image). Not a bind mount of the
  subtree as the root: the agent counts cgroup levels from its mount and the kernel from the
  hierarchy's root, which differ there (daemonset/README.md: nodes that are containers);
- the pod network: one network namespace made by the test, holding the loopback pods, the
  agent's pod (hostNetwork: false) and the fake API server on 127.0.0.1 (the service account
  token and CA mounted where the kubelet mounts them, KUBERNETES_SERVICE_HOST/PORT set).

Then: the probes (exec, as the kubelet runs them), /healthz, /readyz and /metrics, steering by
the pod's environment and by a request's header (through the agent's relay), the HTTP/2
endpoint on the pod IP routing one gRPC channel's calls per stream, `envsteer
status` in the container, what differs from a real node (checked here, listed in
daemonset/README.md), and a rolling update (old pod stopped, new pod from a new image tag on
the same pins) under a bounded connect loop with no failed connect.

The image is built by scripts/image.sh (its base and layers cached); set
ENVSTEER_IMAGE_REPORT=FILE to keep its report (sizes, layers, timings).
"""
import contextlib
import ctypes
import fcntl
import http.client
import json
import os
import re
import socket
import subprocess
import time

import pytest
import yaml

import fakeapi
import fixtures
import harness
import kube2podman
from harness import wait_until
from test_kubernetes import KubeNode, NODE, NS, VIP
from test_thread_context import read_response, tagged

REPO = harness.REPO
DAEMONSET_DIR = os.path.join(REPO, "daemonset")
HERE = os.path.dirname(os.path.abspath(__file__))
KASERVER = os.path.join(HERE, "kaserver.py")
KALOAD = os.path.join(HERE, "kaload.py")
B_VIP = "127.96.31.2"
IL = "127.1.31.21"
# service g: gRPC (port named "grpc": declared HTTP/2) with a dev and a dev.proj1 pod
G_VIP = "127.96.31.3"
GP = 50051
G_PODS = (("g-dev", "127.1.31.31", "dev"), ("g-proj1", "127.1.31.32", "dev.proj1"))
SYS_PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else harness.PYTHON
POD = "envsteer-e2e-%d" % os.getpid()    # the agent's pod (container names start with it)
TARGET_GZ_MIB = 60
# the image of the agent under test: not the tag scripts/image.sh builds for users
TEST_TAG = "localhost/envsteer:e2e"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


k = fixtures.keyer(NS)


@contextlib.contextmanager
def in_netns(path):
    """This thread in the network namespace at path (sockets made meanwhile stay there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns %s" % path)
        yield
    finally:
        if _libc.setns(own, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(own)
        os.close(target)


def podman(*args, timeout=120, check=True):
    r = subprocess.run(kube2podman.podman_command() + list(args), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise harness.HarnessError("podman %s -> %d: %s" % (" ".join(args)[:300], r.returncode,
                                                            r.stderr.strip()[-2000:]))
    return r


def mount_type(path):
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            if harness._unescape_mount(parts[4]) == path:
                found = parts[sep + 1]  # the last mount on path is the visible one
    return found


# ---------------------------------------------------------------------------- the image

@pytest.fixture(scope="module")
def image(e2e_prerequisites, tmp_path_factory):
    """(tag, report text): scripts/image.sh --binary $ENVSTEER_BIN (the runtime stage on the
    agent under test; the base from its cache, made with debootstrap on a machine's first
    run), or the image $ENVSTEER_IMAGE as it is (report None), e.g. one scripts/image.sh built
    with the Dockerfile's build stage."""
    if os.environ.get("ENVSTEER_IMAGE"):
        tag = os.environ["ENVSTEER_IMAGE"]
        podman("image", "exists", tag)
        yield tag, None
        return
    # one run of this module at a time on a machine (TEST_TAG is shared)
    cache = os.environ.get("ENVSTEER_IMAGE_CACHE", "/var/cache/envsteer-image")
    os.makedirs(cache, exist_ok=True)
    lock = open(os.path.join(cache, "test_image.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        report = os.environ.get("ENVSTEER_IMAGE_REPORT") or str(tmp_path_factory.mktemp("image") / "report.md")
        t = time.monotonic()
        r = subprocess.run([os.path.join(REPO, "scripts", "image.sh"), "--binary", harness.agent_bin(),
                            "--tag", TEST_TAG, "--report", report],
                           capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, "scripts/image.sh failed:\n%s" % r.stderr[-4000:]
        with open(report) as f:
            text = f.read()
        m = re.search(r"^image (\S+) ", text, re.M)
        assert m, text
        print("scripts/image.sh: %.0f s\n%s" % (time.monotonic() - t, text))
        yield m.group(1), text
    finally:
        lock.close()


def overlay(d, image, cgroup_root):
    """A kustomization over daemonset/ as users deploy it: the image set (images:), and the
    one setting this test adds, cgroupRoot: the test's node is a subtree of this machine's
    cgroup2 hierarchy (its kubepods.slice there), where a real node's is at the root."""
    name, tag = image.rsplit(":", 1)
    cm = next(o for o in kube2podman.render(DAEMONSET_DIR) if o["kind"] == "ConfigMap")
    text = cm["data"]["config.yaml"].rstrip("\n") + "\ncgroupRoot: %s\n" % cgroup_root
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config-patch.yaml"), "w") as f:
        yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": cm["metadata"]["name"], "namespace": cm["metadata"]["namespace"]},
                        "data": {"config.yaml": text}}, f)
    with open(os.path.join(d, "kustomization.yaml"), "w") as f:
        yaml.safe_dump({"resources": [os.path.relpath(DAEMONSET_DIR, d)],
                        "images": [{"name": "envsteer", "newName": name, "newTag": tag}],
                        "patches": [{"path": "config-patch.yaml"}]}, f)
    return d


def test_image_holds_the_agent_and_its_runtime_libraries_only(image):
    tag, report = image
    if report:
        gz = float(re.search(r"([0-9.]+) MiB compressed", report).group(1))
        assert gz < TARGET_GZ_MIB, report
    r = podman("run", "--rm", "--network=none", *kube2podman.runtime_limits(), "--entrypoint", "/bin/sh", tag, "-c",
               "envsteer --version; ldd /usr/local/bin/envsteer | grep -c 'not found'; "
               "for t in cc gcc g++ c++ clang cmake ninja make ld as bpftool apt-get; do "
               "command -v $t || true; done; find /usr/include -name '*.h' | wc -l",
               check=False)
    out = r.stdout.splitlines()
    version = re.search(r"project\(envsteer VERSION ([0-9.]+)", open(os.path.join(REPO, "CMakeLists.txt")).read())
    assert out[0] == version.group(1), r.stdout
    assert out[1] == "0", "a library is missing:\n" + r.stdout
    # no compiler, no build tool, no headers; apt stays (Debian's slim base has it)
    assert out[2:-1] == ["/usr/bin/apt-get"], r.stdout
    assert out[-1] == "0", "headers in the image: " + r.stdout


def test_translator_follows_the_manifests_or_refuses(tmp_path):
    """Every field of the pod template is translated or refused: a field added to the
    manifests fails here until the translator (and so this test) follows it."""
    objs = kube2podman.render(DAEMONSET_DIR)
    knode = kube2podman.Node("n", "/proc/self/ns/net", str(tmp_path), "127.0.0.1", 6443,
                             {"/sys/fs/bpf": str(tmp_path), "/sys/fs/cgroup": "/sys/fs/cgroup"},
                             str(tmp_path))
    cs = kube2podman.translate(objs, knode)
    assert [(c.name, c.init) for c in cs] == [("mount-bpffs", True), ("envsteer", False)]
    agent = cs[1].argv
    assert "--privileged" not in agent and "--privileged" in cs[0].argv
    assert "--read-only" in agent and "--env" in agent and "NODE_NAME=n" in agent
    assert "--node-name=n" in agent, agent  # $(NODE_NAME) expanded as the kubelet does
    ds = kube2podman.daemonset(objs)
    for where, add in ((ds["spec"]["template"]["spec"], {"hostUsers": False}),
                       (ds["spec"]["template"]["spec"]["containers"][0], {"workingDir": "/"}),
                       (ds["spec"]["template"]["spec"]["containers"][0]["securityContext"],
                        {"procMount": "Unmasked"})):
        where.update(add)
        with pytest.raises(kube2podman.TranslateError, match=list(add)[0]):
            kube2podman.translate(objs, knode)
        del where[list(add)[0]]


# ---------------------------------------------------------------------------- the node

class ImageNode(KubeNode):
    """test_kubernetes' KubeNode with every pod in the test's pod network namespace."""

    podnet = None

    def add_pod(self, *a, **kw):
        kw.setdefault("netns", self.podnet)
        return super().add_pod(*a, **kw)


class Pod:
    """The DaemonSet's pod on the node: its containers, run by podman from the manifests."""

    def __init__(self, node, knode, kustomize_dir):
        self.node, self.knode = node, knode
        self.objs = kube2podman.render(kustomize_dir)
        self.containers = kube2podman.translate(self.objs, knode)
        self.init_logs = []
        self.agent = next(c for c in self.containers if not c.init)
        a = self.agent.argv
        self.caps = [a[i + 1][4:] for i, x in enumerate(a) if x == "--cap-add"]
        self.name = self.agent.argv[self.agent.argv.index("--name") + 1]

    def start(self):
        for c in self.containers:
            if c.init:  # to completion, in order; a failure stops the pod
                r = subprocess.run(c.argv, capture_output=True, text=True, timeout=120)
                assert r.returncode == 0, "init container %s: %s%s" % (c.name, r.stdout, r.stderr)
                self.init_logs.append(r.stdout + r.stderr)
        r = subprocess.run(self.agent.argv, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, "podman run %s: %s" % (self.agent.name, r.stderr)
        a = self.agent.argv
        # the container's log file: in the harness' failure reports as the agent log
        self.node.agent_log = a[a.index("--log-opt") + 1].split("=", 1)[1]
        self.node.agent_logs.append(self.node.agent_log)
        self.wait_probe("startupProbe")
        return self

    def probe(self, kind):
        """One run of the container's exec probe, as the kubelet runs it: True on exit 0."""
        p = self.agent.probes[kind]
        r = podman("exec", self.name, *p["exec"]["command"], timeout=p.get("timeoutSeconds", 1) + 10,
                   check=False)
        return r.returncode == 0

    def wait_probe(self, kind):
        """Runs the probe every periodSeconds until it passes, at most failureThreshold times
        (then the kubelet would restart the container: a test failure here)."""
        p = self.agent.probes[kind]
        for _ in range(p.get("failureThreshold", 3)):
            if self.probe(kind):
                return
            if podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() != "true":
                break
            time.sleep(p.get("periodSeconds", 10))
        raise AssertionError("%s never passed; agent log:\n%s" % (kind, self.logs()))

    def exec(self, *argv, timeout=30):
        return podman("exec", self.name, *argv, timeout=timeout, check=False)

    def logs(self):
        r = podman("logs", self.name, check=False)
        return (r.stdout + r.stderr)[-8000:]

    def stop(self):
        """What deleting the pod does: SIGTERM, terminationGracePeriodSeconds, then SIGKILL."""
        podman("stop", "--time", str(self.agent.stop_timeout), self.name, timeout=self.agent.stop_timeout + 30)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip()
        log = self.logs()
        podman("rm", "--force", self.name)
        return int(code), log


@pytest.fixture(scope="module")
def cluster(image, tmp_path_factory):
    """The fake API server, a node with pods in kubelet's layout, the node's bpffs and cgroup
    mounts, and the DaemonSet's pod started from the manifests."""
    api = fakeapi.FakeAPI(bookmark_interval=1.0)
    node = ImageNode("img", api, None)
    mounts, pods = [], []
    try:
        podnet = node.add_netns("es-img-%d" % os.getpid())
        ImageNode.podnet = podnet
        with in_netns(podnet.path):  # the API's listening socket is in the pod network
            api.start()
        sa = os.path.join(node.tmp, "serviceaccount")
        env = api.write_incluster(sa, namespace="envsteer-system")
        # the node's /sys/fs/bpf: a shared mount point (systemd makes / shared on real nodes)
        # with no bpffs on it yet, so that the init container has to mount it
        bpf = os.path.join(node.tmp, "node-root", "sys", "fs", "bpf")
        os.makedirs(bpf)
        subprocess.run(["mount", "--bind", bpf, bpf], check=True)
        mounts.append(bpf)
        subprocess.run(["mount", "--make-shared", bpf], check=True)
        os.rmdir(node.pin_dir)  # the harness' own pin dir: the pins are in the node's bpffs
        node.pin_dir = bpf + "/envsteer"

        node.populate(server_script=KASERVER)  # keep-alive servers: requests re-routed on one connection
        # service b (pods that close their connections), and il: a pod that says it is a
        # thread-per-request server calling b, and is not one (it reads two requests, then
        # serves both)
        api.create(fakeapi.make_service(NS, "b", B_VIP, [("http", 80, 8080)], selector={"app": "b"}))
        eps = []
        for name, ip, e in (("b-dev", "127.1.31.5", "dev"), ("b-proj1", "127.1.31.6", "dev.proj1")):
            node.kube_pod(name, ip, env=e, app="b")
            node.start_server(k(name))
            eps.append((ip, True, name, NODE, node.uids[name]))
        api.create(fakeapi.make_endpointslice(NS, "b-abcde", "b", eps, [("http", 8080)]))
        node.kube_pod("il", IL, env="dev", app="il")
        api.mutate("pods", NS, "il", lambda o: o["metadata"].setdefault("annotations", {}).update(
            {"envsteer.io/thread-context": "on"}))
        node.start_server(k("il"), script=os.path.join(HERE, "ctxserver.py"),
                          args=["--mode", "interleave", "--to", B_VIP + ":80"])
        # service g: gRPC servers, for the HTTP/2 endpoint the DaemonSet turns on
        api.create(fakeapi.make_service(NS, "g", G_VIP, [("grpc", GP, GP)], selector={"app": "g"}))
        eps = []
        for name, ip, e in G_PODS:
            pod_ = node.kube_pod(name, ip, env=e, app="g")
            node._popen([SYS_PY, os.path.join(HERE, "grpcserver.py"), ip, str(GP), k(name)],
                        pod_.cgroup_dir, "grpc-%s.log" % name, pod_.netns)  # stopped with the node
            eps.append((ip, True, name, NODE, node.uids[name]))
        api.create(fakeapi.make_endpointslice(NS, "g-abcde", "g", eps, [("grpc", GP)]))

        node.knode = kube2podman.Node(NODE, podnet.path, sa, env["KUBERNETES_SERVICE_HOST"],
                                      env["KUBERNETES_SERVICE_PORT"],
                                      # the node's cgroups: this machine's, as they are
                                      {"/sys/fs/bpf": bpf, "/sys/fs/cgroup": "/sys/fs/cgroup"}, node.tmp,
                                      pod_name=POD, log_dir=node.log_dir)
        node.image_tag = image[0]
        node.agent_pods = pods
        node.podnet = podnet
        node.bpf_root = bpf
        pods.append(Pod(node, node.knode, overlay(os.path.join(node.tmp, "overlay"), image[0], node.cgroup_rel)).start())
        yield node
    finally:
        for p in pods:
            podman("rm", "--force", "--time", "5", p.name, check=False)
        out = podman("ps", "-a", "--filter", "label=io.kubernetes.pod.name=" + POD, "-q", check=False)
        for cid in out.stdout.split():
            podman("rm", "--force", cid, check=False)
        if os.path.isdir(node.pin_dir):
            node.uninstall(check=False)
        for m in reversed(mounts):  # bpffs on the bind mount on the directory
            for _ in range(50):
                if mount_type(m) is None:
                    break
                r = subprocess.run(["umount", m], capture_output=True, text=True)
                if r.returncode != 0:
                    time.sleep(0.1)
            else:
                node.cleanup_problems.append("umount %s: %s" % (m, r.stderr.strip()))
        node.pin_dir = node.bpf_root + "/envsteer" if hasattr(node, "bpf_root") else node.pin_dir
        node.close()
        api.stop()


@pytest.fixture(scope="module")
def pod(cluster):
    return cluster.agent_pods[-1]


def admin(node, port, path):
    """GET from inside the pod network (the agent pod's loopback is there)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    with in_netns(node.podnet.path):
        conn.connect()
    return harness._get(conn, path)


def answer(node, client):
    r = node.request(k(client), VIP, 80)
    return r["answer"]["pod"] if r.get("ok") else r.get("errno")


def sequence(node, client, envs):
    r = node.run_in_pod(k(client), [harness.PYTHON, KALOAD, "--to", VIP + ":80", "--sequence",
                                    ",".join(envs), "--timeout", "10"], timeout=60)
    lines = (r.stdout or "").strip().splitlines()
    assert r.returncode == 0 and lines, r.stdout
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------- the pod

def test_init_container_mounted_bpffs_on_the_node(cluster, pod):
    assert mount_type(cluster.bpf_root) == "bpf", "the init container's mount did not reach the node"
    assert "mounted bpffs at /sys/fs/bpf" in pod.init_logs[0], pod.init_logs
    # the agent pinned its state there, in the node's bpffs
    assert {"maps", "links"} <= set(os.listdir(cluster.pin_dir)), os.listdir(cluster.pin_dir)


def test_probes_and_health_endpoints(cluster, pod):
    assert pod.probe("livenessProbe")
    wait_until(lambda: pod.probe("readinessProbe"), 30, interval=1, what="readiness probe")
    # the pod's loopback: health and metrics; the pod IP: metrics only
    assert admin(cluster, 9966, "/healthz")[0] == 200
    assert admin(cluster, 9966, "/readyz")[0] == 200
    code, body = admin(cluster, 9967, "/metrics")
    assert code == 200 and "envsteer_ready 1" in body, body[:2000]
    assert admin(cluster, 9967, "/healthz")[0] == 404


def test_steers_by_pod_env_and_by_request_header(cluster, pod):
    assert answer(cluster, "c-dev") == k("a-dev")
    assert answer(cluster, "c-proj1") == k("a-proj1")
    # one keep-alive connection from c-dev (made to a-dev): tagged requests re-routed by the
    # containerized agent's relay (first one) and in the kernel (then); untagged ones go by
    # c-dev's own env
    envs = ["dev.proj1", "-", "dev.proj1", "dev.proj1.alice", "dev"]
    res = sequence(cluster, "c-dev", envs)
    assert res["connects"] == 1, res
    want = {"dev.proj1": k("a-proj1"), "dev.proj1.alice": k("a-proj1"), "-": k("a-dev"), "dev": k("a-dev")}
    assert [a["pod"] for a in res["answers"]] == [want[e] for e in envs], (res, pod.logs())


def test_h2_endpoint_on_the_pod_ip_routes_grpc_per_stream(cluster, pod):
    """The DaemonSet turns the HTTP/2 endpoint on at $(POD_IP):15002 (here the pod network's
    127.0.0.1): one gRPC channel from c-dev (dev) to service g carries calls of dev.proj1 and
    untagged ones, each answered by its own env's pod through the containerized agent; a
    connection to the port that no pod's connect() was diverted for is closed unread."""
    h2 = status(pod)["agent"]["h2"]
    assert h2["listen"] == "%s:15002" % cluster.knode.pod_ip, h2
    for name, ip, _ in G_PODS:
        try:
            wait_until(lambda: _tcp_ok(cluster, ip, GP), 20, 0.2, "grpc server %s" % ip)
        except TimeoutError:
            raise AssertionError(harness._read_file(os.path.join(cluster.log_dir, "grpc-%s.log" % name), 3000))
    r = cluster.run_in_pod(k("c-dev"), [SYS_PY, os.path.join(HERE, "grpcclient.py"), "--to", "%s:%d" % (G_VIP, GP),
                                        "mix", "--envs=dev.proj1,-", "--calls", "8"], timeout=90)
    lines = (r.stdout or "").strip().splitlines()
    assert r.returncode == 0 and lines, (r, pod.logs())
    ans = json.loads(lines[-1])["answers"]
    want = {"dev.proj1": k("g-proj1"), "-": k("g-dev")}
    assert len(ans) == 8 and all("error" not in a and a["pod"] == want[a["env"]] and a["exact"] for a in ans), ans
    h2 = status(pod)["agent"]["h2"]
    assert h2["counters"]["connections_total.accepted"] >= 1, h2
    assert h2["streams_by_outcome"].get("header", 0) >= 4 and h2["streams_by_outcome"].get("caller", 0) >= 4, h2
    # straight to the endpoint, not through a diverted connect(): closed, nothing served
    with in_netns(cluster.podnet.path):  # a socket belongs to the namespace it is made in
        s = socket.create_connection((cluster.knode.pod_ip, 15002), 10)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    except OSError:
        pass
    try:
        got = s.recv(4096)
    except ConnectionResetError:
        got = b""
    s.close()
    assert got == b"", got
    wait_until(lambda: status(pod)["agent"]["h2"]["counters"]["connections_total.unknown_caller"] >= 1, 10, 0.2,
               "unknown_caller counted")


def _tcp_ok(node, ip, port):
    try:
        with in_netns(node.podnet.path):  # a socket belongs to the namespace it is made in
            socket.create_connection((ip, port), 1).close()
        return True
    except OSError:
        return False


def test_envsteer_status_inside_the_container(cluster, pod):
    r = pod.exec("envsteer", "status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kubernetes" in r.stdout, r.stdout
    r = pod.exec("envsteer", "status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["agent"]["ready"] is True, st["agent"]
    r = pod.exec("envsteer", "explain", "--from", k("c-proj1"), "--to", k("a"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "a-proj1" in r.stdout and "127.1.31.2" in r.stdout, r.stdout


def test_what_differs_from_a_host_process(cluster, pod):
    """What a container on a real node sees differently from a host process, as
    daemonset/README.md lists it ("Inside the container")."""
    # its own cgroup namespace: its own cgroup is "/", yet the hostPath volume over
    # /sys/fs/cgroup is the node's whole cgroup2 hierarchy, kubepods.slice and all
    r = pod.exec("cat", "/proc/self/cgroup")
    assert "0::/\n" in r.stdout, r.stdout
    # the volume replaced the runtime's own /sys/fs/cgroup: the container's only cgroup2
    # mount is the node's, where the node has it (/sys/fs/cgroup, or .../unified on hybrid
    # nodes), and the kubelet's layout is there under the same paths as on the node
    r = pod.exec("grep", " cgroup2 ", "/proc/self/mounts")
    assert [ln.split()[1] for ln in r.stdout.splitlines()] == [cluster.cg_mount], r.stdout
    r = pod.exec("ls", os.path.join(cluster.cgroup_dir, "kubepods.slice"))
    assert "kubepods-besteffort.slice" in r.stdout.split(), r.stdout
    # the node's PID namespace (hostPID: true, to enter pods' network namespaces through
    # their processes): the pods' processes are in its /proc, and its /proc/self/status lists
    # one pid (NSpid), as a host process' does
    server = cluster.pod(k("a-dev")).server.pid
    assert pod.exec("test", "-e", "/proc/%d/cmdline" % server).returncode == 0
    r = pod.exec("grep", "^NSpid:", "/proc/self/status")
    assert len(r.stdout.split()) == 2, r.stdout
    # the DaemonSet's capabilities, no more (those this machine can give: its bounding set)
    with open("/proc/self/status") as f:
        bnd = int(re.search(r"^CapBnd:\s*(\S+)", f.read(), re.M).group(1), 16)
    bits = {"BPF": 39, "NET_ADMIN": 12, "PERFMON": 38, "SYS_RESOURCE": 24, "SYS_ADMIN": 21,
            "SYS_PTRACE": 19}
    want = sum(1 << bits[c] for c in pod.caps) & bnd
    r = pod.exec("grep", "^CapEff", "/proc/self/status")
    assert int(r.stdout.split()[1], 16) == want, (r.stdout, hex(want))
    # a read-only root filesystem; the admin socket's emptyDir is writable
    assert pod.exec("touch", "/etc/x").returncode != 0
    assert pod.exec("test", "-S", "/run/envsteer/admin.sock").returncode == 0
    # the pods were found by UID in kubelet's layout, as seen from inside the container
    model = status(pod)["agent"]["model"]
    assert model["missing_cgroups"] == [] and model["local_pods"] == 9, model


def status(pod):
    r = pod.exec("envsteer", "status", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


@pytest.mark.kernel_feature("request_context")
def test_a_switched_off_process_stays_switched_off(cluster, pod):
    """The kernel switches the thread context off for good in a process it sees serving
    interleaved requests; the agent forgets the process only once it has exited, and only
    when it can tell (it sees the node's processes, hostPID: true): the entry of a live
    process must outlive the agent's 2 s sweeps."""
    with in_netns(cluster.podnet.path):
        c1 = socket.create_connection((IL, 8080), timeout=10)
        c2 = socket.create_connection((IL, 8080), timeout=10)
    with c1, c2:
        c1.sendall(tagged("/", "dev.proj1"))
        time.sleep(0.2)  # il reads c1's request first
        c2.sendall(tagged("/", "dev.proj2"))
        a1, _ = read_response(c1)
        a2, _ = read_response(c2)
    # never wrong: both calls by il's own env (b has a dev.proj1 pod)
    assert [a1["calls"][0]["pod"], a2["calls"][0]["pod"]] == [k("b-dev"), k("b-dev")], (a1, a2)
    pid = cluster.pod(k("il")).server.pid

    def off():
        p = {x["pod"]: x for x in status(pod)["agent"]["pods"]}[k("il")]
        return p["thread_context"] == "switched-off" and \
            [x["pid"] for x in p["switched_off_processes"]] == [pid]
    wait_until(off, 10, what="il switched off")
    time.sleep(5)  # two sweeps and more
    assert off(), (status(pod)["agent"]["pods"], pod.logs())


def test_rolling_update_keeps_steering(cluster, pod, tmp_path):
    """A new image tag, applied: the old pod is deleted (SIGTERM), then the new one starts on
    the same pins (init container, then the agent). No connect fails meanwhile."""
    node = cluster
    new_tag = "%s-rolling-%d" % (node.image_tag, os.getpid())
    podman("tag", node.image_tag, new_tag)
    try:
        new = Pod(node, node.knode, overlay(str(tmp_path / "overlay"), new_tag, node.cgroup_rel))
        assert new_tag in new.agent.argv, new.agent.argv
        before = node.pinned_ids()
        loop = node.start_loop(k("c-proj1"), VIP, 80, count=3000, duration=15.0)
        time.sleep(1.0)
        rc, log = pod.stop()
        node.agent_pods.remove(pod)
        assert rc == 0, "old agent's exit code %s:\n%s" % (rc, log)
        time.sleep(0.5)  # no agent at all for a while
        node.agent_pods.append(new)
        new.start()
        assert "bpffs is mounted at /sys/fs/bpf" in new.init_logs[0], new.init_logs
        assert loop.proc.poll() is None, "the loop ended before the new agent started"
        res = loop.result()
        assert res["attempts"] == 3000 and res["failures"] == 0, res
        assert res["pods"] == {k("a-proj1"): 3000}, res
        wait_until(lambda: new.probe("readinessProbe"), 30, interval=1, what="new pod ready")
        # the new agent adopted the pinned maps (same kernel ids)
        after = node.pinned_ids()
        maps = lambda ids: {p: v for p, v in ids.items() if v[0] == "map"}  # noqa: E731
        assert maps(after) == maps(before) and maps(before), (before, after)
        assert answer(node, "c-dev") == k("a-dev")
        res = sequence(node, "c-dev", ["dev.proj1", "-"])
        assert [a["pod"] for a in res["answers"]] == [k("a-proj1"), k("a-dev")], res
    finally:
        podman("untag", new_tag, new_tag, check=False)  # that name only (no name: all of them)
