"""End-to-end harness for envsteer: one "node" on this machine.

A Node owns
  - a cgroup v2 subtree  <cgroup2 mount>/envsteer-e2e-<pid>-<name>  (the agent's --cgroup-root),
    with one directory per local pod (plus a sibling subtree for pods "on other nodes"),
  - a bpffs pin directory /sys/fs/bpf/envsteer-e2e-<pid>-<name>     (the agent's --bpffs),
  - a manifest directory (kubectl-shaped YAML, rewritten atomically),
  - a free admin port on 127.0.0.1 (health, metrics) and an admin socket in its temp dir
    (status, explain, trace), the agent process, pod server processes and clients,
  - optionally network namespaces (for IPv6 pods).
Everything is removed by close() (idempotent; also registered with atexit), children before
parents, processes (killed by the PID this harness started) before their cgroups.

A "pod" is podserver.py running inside the pod's cgroup directory, listening on the pod IP
(127.1.x.y; all of 127.0.0.0/8 is local on Linux). Clients (podclient.py) run in a child
cgroup of the pod's directory. No traffic ever leaves 127.0.0.0/8 or a test-created netns.

Only the standard library is used (pytest is used by the tests, not here).
"""
import atexit
import base64
import errno
import fcntl
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PODSERVER = os.path.join(HERE, "podserver.py")
PODCLIENT = os.path.join(HERE, "podclient.py")
PYTHON = sys.executable or "python3"
PREFIX = "envsteer-e2e"
CGROUP_ANNOTATION = "envsteer.io/cgroup"


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the agent's admin socket)."""

    def __init__(self, path, timeout=5.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.unix_path)
        except OSError:
            s.close()
            raise
        self.sock = s


class HarnessError(Exception):
    pass


class AgentError(HarnessError):
    pass


# --------------------------------------------------------------------------- environment

def agent_bin():
    """The envsteer binary: $ENVSTEER_BIN, else <repo>/build/envsteer."""
    return os.environ.get("ENVSTEER_BIN") or os.path.join(REPO, "build", "envsteer")


def _unescape_mount(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _mounts():
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                yield _unescape_mount(parts[1]), parts[2]


def cgroup2_mount():
    """Mount point of the cgroup v2 hierarchy, read from /proc/self/mounts."""
    for mnt, fstype in _mounts():
        if fstype == "cgroup2":
            return mnt
    raise HarnessError("no cgroup2 mount in /proc/self/mounts")


def bpffs_mounted(path="/sys/fs/bpf"):
    return any(m == path and t == "bpf" for m, t in _mounts())


def ensure_bpffs(path="/sys/fs/bpf"):
    """Mount bpffs at path when it is not mounted there yet. Test files run side by side
    (ctest -j): the check and the mount hold a lock, so that two of them never stack a second
    bpffs over pins the first one already made."""
    if bpffs_mounted(path):
        return
    os.makedirs(path, exist_ok=True)
    with open("/run/%s-bpffs.lock" % PREFIX, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if bpffs_mounted(path):
            return
        subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True, timeout=10)
    if not bpffs_mounted(path):
        raise HarnessError("could not mount bpffs at " + path)


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def addr(ip, port):
    """'ip:port', with brackets for IPv6."""
    return "[%s]:%d" % (ip, port) if ":" in ip else "%s:%d" % (ip, port)


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it returns a truthy value (returned) or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s (last: %r)"
                               % (timeout, what, last))
        time.sleep(interval)


_KERNEL_FEATURES = None


def kernel_features():
    """The kernel features the agent probes, as `envsteer status --json` reports them
    ("kernel": release, set_retval, request_context, notes); probed once per process."""
    global _KERNEL_FEATURES
    if _KERNEL_FEATURES is None:
        r = subprocess.run([agent_bin(), "status", "--json", "--admin-socket", "",
                            "--bpffs", "/sys/fs/bpf/%s-features-none" % PREFIX],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        try:
            _KERNEL_FEATURES = json.loads(r.stdout)["kernel"]
        except (ValueError, KeyError):
            raise HarnessError("envsteer status --json gave no kernel features (rc %s): %r %r"
                               % (r.returncode, r.stdout[:300], r.stderr[:300]))
    return _KERNEL_FEATURES


try:
    import ctypes
    _LIBC = ctypes.CDLL(None, use_errno=True)
except Exception:  # pragma: no cover
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig):
    """preexec_fn: the child gets sig when this (harness) process dies, even by SIGKILL,
    so a killed test run leaves no pod server or agent behind."""
    def fn():
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    return fn


def _terminate(proc, timeout=5.0):
    """Stop a process this harness started (by its PID): SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc is not None else None
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait(timeout)


def _podclient():
    """podclient.py as a module (for host-side exchanges run in this process)."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import podclient
    return podclient


def _read_file(path, limit=None):
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    if limit and len(text) > limit:
        text = "...(%d bytes cut)...\n" % (len(text) - limit) + text[-limit:]
    return text


# --------------------------------------------------------------------------- YAML writer

_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n", ""}
_NUMLIKE = re.compile(r"^[-+]?(\d[\d_]*|\d*\.\d+|\d+\.\d*|0x[0-9a-fA-F]+|0o?[0-7]+)"
                      r"([eE][-+]?\d+)?$|^[-+]?\.(inf|nan)$", re.I)
_PLAIN = re.compile(r"^[A-Za-z0-9_./(][A-Za-z0-9_./:()@+=-]*$")


def yaml_scalar(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if (s.lower() in _RESERVED or _NUMLIKE.match(s) or not _PLAIN.match(s)
            or s.endswith(":")):
        return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar
    return s


def _yaml_lines(obj, ind):
    sp = " " * ind
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = yaml_scalar(k)
            if isinstance(v, dict) and v:
                out.append("%s%s:" % (sp, key))
                out.extend(_yaml_lines(v, ind + 2))
            elif isinstance(v, list) and v:
                out.append("%s%s:" % (sp, key))
                out.extend(_yaml_lines(v, ind))  # kubectl style: items at the key's indent
            elif isinstance(v, dict):
                out.append("%s%s: {}" % (sp, key))
            elif isinstance(v, list):
                out.append("%s%s: []" % (sp, key))
            else:
                out.append("%s%s: %s" % (sp, key, yaml_scalar(v)))
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                sub = _yaml_lines(item, ind + 2)
                sub[0] = sp + "- " + sub[0][ind + 2:]
                out.extend(sub)
            else:
                out.append("%s- %s" % (sp, yaml_scalar(item) if not isinstance(item, (dict, list))
                                       else ("{}" if isinstance(item, dict) else "[]")))
    else:
        out.append(sp + yaml_scalar(obj))
    return out


def to_yaml(obj):
    return "\n".join(_yaml_lines(obj, 0)) + "\n"


def to_yaml_docs(objs):
    return "".join("---\n" + to_yaml(o) for o in objs)


# --------------------------------------------------------------------------- model

class Service:
    def __init__(self, ns, name, cluster_ips, ports, selector, annotations=None):
        self.ns, self.name = ns, name
        self.annotations = dict(annotations or {})
        self.cluster_ips = list(cluster_ips)
        self.ports = ports  # [{"name","port","target_port","protocol"}]
        self.selector = dict(selector)

    @property
    def key(self):
        return "%s/%s" % (self.ns, self.name)

    @property
    def cluster_ip(self):
        return self.cluster_ips[0]

    @property
    def port(self):
        return self.ports[0]["port"]

    def addr(self, port=None):
        return addr(self.cluster_ip, port or self.port)


class Pod:
    def __init__(self, node, ns, name, ips, labels, ready, local, port, netns, annotations=None):
        self.node = node
        self.annotations = dict(annotations or {})
        self.ns, self.name = ns, name
        self.ips = list(ips)
        self.labels = dict(labels)
        self.ready = ready
        self.local = local
        self.port = port
        self.netns = netns
        sub = "pod-%s-%s" % (ns, name)
        base = node.cgroup_rel if local else node.remote_cgroup_rel
        self.cgroup_rel = base + "/" + sub
        self.cgroup_dir = os.path.join(node.cg_mount, self.cgroup_rel)
        self.server = None  # Popen of podserver.py
        self.server_args = []  # extra podserver.py options (start_server(args=...))
        self.uid = "00000000-0000-4000-8000-%012x" % (abs(hash(("pod", ns, name))) % (1 << 48))

    @property
    def key(self):
        return "%s/%s" % (self.ns, self.name)

    @property
    def ip(self):
        return self.ips[0]

    def env(self):
        return self.labels.get(self.node.env_label)


class NetNS:
    """A network namespace made by the test (lo up), removed by close()."""

    def __init__(self, name):
        self.name = name
        self.path = "/run/netns/" + name
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=10,
                       capture_output=True)
        self._closed = False
        try:
            self.ip("link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    def ip(self, *args):
        r = subprocess.run(["ip", "-n", self.name] + list(args), capture_output=True,
                           text=True, timeout=10)
        if r.returncode != 0:
            raise HarnessError("ip -n %s %s: %s" % (self.name, " ".join(args), r.stderr.strip()))
        return r.stdout

    def add_addr(self, cidr, dev="lo"):
        args = ["addr", "add", cidr, "dev", dev]
        if ":" in cidr:
            args = ["-6"] + args + ["nodad"]
        self.ip(*args)

    def prefix(self):
        """argv prefix that runs a command inside this netns without touching mounts."""
        return ["nsenter", "--net=" + self.path]

    def close(self):
        if self._closed:
            return
        self._closed = True
        subprocess.run(["ip", "netns", "del", self.name], timeout=10, capture_output=True)


# --------------------------------------------------------------------------- node

_LIVE_NODES = []


def _close_all():
    for n in list(_LIVE_NODES):
        try:
            n.close()
        except Exception as e:  # pragma: no cover - last resort
            sys.stderr.write("harness: close %s failed: %s\n" % (n.name, e))


atexit.register(_close_all)

_JOIN_CGROUP = 'echo $$ > "$1" && shift && exec "$@"'


def _get(conn, path):
    """One GET on conn, which it closes. (status, body text)."""
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


class Node:
    def __init__(self, name, default_env=None, env_label="virtual-env", splitter=None,
                 bin=None, manifest_style="docs", log_level="debug", participation="all"):
        if not re.match(r"^[a-z0-9-]{1,40}$", name):
            raise ValueError("node name must be [a-z0-9-]{1,40}")
        self.name = name
        self.uid = "%s-%d-%s" % (PREFIX, os.getpid(), name)
        self.default_env = default_env
        self.env_label = env_label
        self.splitter = splitter
        self.bin = bin or agent_bin()
        self.manifest_style = manifest_style
        self.log_level = log_level
        # --participation: "all" (every local pod takes part, as the suites written before
        # participation expect), or None for the agent's default ("selected": pods with the
        # env label or envsteer.io/enabled=true)
        self.participation = participation
        self.services = {}
        self.pods = {}
        self.netns = []
        self.extra_docs = []
        self.procs = []  # every Popen this node started (besides the agent)
        self.agent = None
        self.agent_log = None
        self.agent_logs = []
        self.admin = None
        self.admin_socket = None
        self._agent_n = 0
        self._client_n = itertools.count(1)
        self._resource_version = itertools.count(1000)
        self._closed = False
        self.cleanup_problems = []

        self.cg_mount = cgroup2_mount()
        self.cgroup_rel = self.uid
        self.cgroup_dir = os.path.join(self.cg_mount, self.cgroup_rel)
        self.remote_cgroup_rel = self.uid + "-remote"
        self.remote_cgroup_dir = os.path.join(self.cg_mount, self.remote_cgroup_rel)
        ensure_bpffs()
        self.pin_dir = "/sys/fs/bpf/" + self.uid
        self.tmp = tempfile.mkdtemp(prefix=self.uid + "-")
        self.manifest_dir = os.path.join(self.tmp, "manifests")
        self.staging_dir = os.path.join(self.tmp, "staging")
        self.log_dir = os.path.join(self.tmp, "logs")
        for d in (self.manifest_dir, self.staging_dir, self.log_dir):
            os.mkdir(d)
        # the agent's admin socket (status, explain, trace); tmp is mode 0700
        self.admin_socket = os.path.join(self.tmp, "admin.sock")
        _LIVE_NODES.append(self)
        try:
            for d in (self.cgroup_dir, self.remote_cgroup_dir):
                if os.path.isdir(d):  # left over by a crashed run with the same pid
                    self._remove_cgroup_tree(d)
                os.mkdir(d)
            os.makedirs(self.pin_dir, exist_ok=True)
        except Exception:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ model edits

    def add_service(self, ns, name, cluster_ip, port=80, target_port=8080, selector=None,
                    protocols=("TCP", "UDP"), extra_ports=(), annotations=None, write=False):
        """A ClusterIP Service; selector defaults to {"app": name}. One entry per protocol."""
        ips = [cluster_ip] if isinstance(cluster_ip, str) else list(cluster_ip)
        ports = []
        for proto in protocols:
            ports.append({"name": "%s-%d" % (proto.lower(), port), "port": port,
                          "target_port": target_port, "protocol": proto})
        for p in extra_ports:
            ports.append(dict(p))
        svc = Service(ns, name, ips, ports, selector if selector is not None else {"app": name},
                      annotations)
        self.services[svc.key] = svc
        if write:
            self.write_manifests()
        return svc

    def add_pod(self, ns, name, ip, labels=None, ready=True, local=True, port=8080,
                env=None, app=None, netns=None, annotations=None, write=False):
        """A Running pod with podIP ip. env/app are shortcuts for the env and app labels;
        annotations are the pod's metadata.annotations (e.g. envsteer.io/thread-context)."""
        key = "%s/%s" % (ns, name)
        if key in self.pods:
            raise HarnessError("pod %s exists" % key)
        labels = dict(labels or {})
        if app is not None:
            labels["app"] = app
        if env is not None:
            labels[self.env_label] = env
        ips = [ip] if isinstance(ip, str) else list(ip)
        pod = Pod(self, ns, name, ips, labels, ready, local, port, netns, annotations)
        os.makedirs(pod.cgroup_dir, exist_ok=True)
        self.pods[key] = pod
        if write:
            self.write_manifests()
        return pod

    def pod(self, key):
        return key if isinstance(key, Pod) else self.pods[key]

    def set_labels(self, key, labels, replace=False, write=True):
        pod = self.pod(key)
        if replace:
            pod.labels = dict(labels)
        else:
            for k, v in labels.items():
                if v is None:
                    pod.labels.pop(k, None)
                else:
                    pod.labels[k] = v
        if write:
            self.write_manifests()

    def set_env(self, key, env, write=True):
        """Set (or, with None, remove) the pod's env label."""
        self.set_labels(key, {self.env_label: env}, write=write)

    def set_ready(self, key, ready, write=True):
        self.pod(key).ready = bool(ready)
        if write:
            self.write_manifests()

    def remove_pod(self, key, write=True):
        pod = self.pod(key)
        del self.pods[pod.key]
        if write:
            self.write_manifests()
        self.stop_server(pod)
        self._remove_cgroup_tree(pod.cgroup_dir)

    def remove_service(self, key, write=True):
        del self.services[key]
        if write:
            self.write_manifests()

    # ------------------------------------------------------------------ manifests

    def _rv(self):
        return str(next(self._resource_version))

    def service_object(self, svc):
        meta = {
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "name": svc.name,
            "namespace": svc.ns,
            "resourceVersion": self._rv(),
            "uid": "00000000-0000-4000-9000-%012x" % (abs(hash(svc.key)) % (1 << 48)),
        }
        if svc.annotations:
            meta["annotations"] = dict(svc.annotations)
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "clusterIP": svc.cluster_ip,
                "clusterIPs": list(svc.cluster_ips),
                "internalTrafficPolicy": "Cluster",
                "ipFamilies": ["IPv6" if ":" in ip else "IPv4" for ip in svc.cluster_ips],
                "ipFamilyPolicy": "SingleStack" if len(svc.cluster_ips) == 1 else "PreferDualStack",
                "ports": [dict({"name": p["name"], "port": p["port"], "protocol": p["protocol"],
                                "targetPort": p["target_port"]},
                               **({"appProtocol": p["app_protocol"]} if p.get("app_protocol") else {}))
                          for p in svc.ports],
                "selector": dict(svc.selector),
                "sessionAffinity": "None",
                "type": "ClusterIP",
            },
            "status": {"loadBalancer": {}},
        }

    def pod_object(self, pod):
        st = "True" if pod.ready else "False"
        meta = {
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "labels": dict(pod.labels),
            "name": pod.name,
            "namespace": pod.ns,
            "resourceVersion": self._rv(),
            "uid": pod.uid,
        }
        ann = dict(pod.annotations)
        if pod.local:
            ann[CGROUP_ANNOTATION] = pod.cgroup_rel
        if ann:
            meta["annotations"] = ann
        if not pod.labels:
            del meta["labels"]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "containers": [{
                    "image": "envsteer-e2e/podserver:latest",
                    "name": "app",
                    "ports": [
                        {"containerPort": pod.port, "name": "http", "protocol": "TCP"},
                        {"containerPort": pod.port, "name": "udp", "protocol": "UDP"},
                    ],
                }],
                "nodeName": self.uid if pod.local else self.uid + "-other",
            },
            "status": {
                "conditions": [
                    {"lastTransitionTime": "2024-01-01T00:00:00Z", "status": "True",
                     "type": "Initialized"},
                    {"lastTransitionTime": "2024-01-01T00:00:00Z", "status": st,
                     "type": "Ready"},
                    {"lastTransitionTime": "2024-01-01T00:00:00Z", "status": st,
                     "type": "ContainersReady"},
                    {"lastTransitionTime": "2024-01-01T00:00:00Z", "status": "True",
                     "type": "PodScheduled"},
                ],
                "hostIP": "127.0.0.1",
                "phase": "Running",
                "podIP": pod.ip,
                "podIPs": [{"ip": ip} for ip in pod.ips],
                "qosClass": "BestEffort",
                "startTime": "2024-01-01T00:00:00Z",
            },
        }

    def manifest_objects(self):
        objs = [self.service_object(s) for s in self.services.values()]
        objs += [self.pod_object(p) for p in self.pods.values()]
        return objs

    def manifest_text(self):
        objs = self.manifest_objects()
        if self.manifest_style == "list":
            text = to_yaml({"apiVersion": "v1", "items": objs, "kind": "List",
                            "metadata": {"resourceVersion": ""}})
        else:
            text = to_yaml_docs(objs)
        for doc in self.extra_docs:
            text += "---\n" + doc.rstrip("\n") + "\n"
        return text

    def _atomic_write(self, filename, text):
        staged = os.path.join(self.staging_dir, filename + ".tmp")
        with open(staged, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(staged, os.path.join(self.manifest_dir, filename))

    def write_manifests(self):
        """Write all objects to <manifest dir>/cluster.yaml (temp file + rename)."""
        self._atomic_write("cluster.yaml", self.manifest_text())

    def write_raw_manifest(self, filename, text):
        """Atomically put an arbitrary file (e.g. a broken one) into the manifest dir."""
        self._atomic_write(filename, text)

    def remove_raw_manifest(self, filename):
        try:
            os.unlink(os.path.join(self.manifest_dir, filename))
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ expected semantics

    def pod_env(self, pod):
        """A pod's environment per DESIGN.md: label, else default env, else base ('')."""
        e = self.pod(pod).env()
        if e is None:
            return self.default_env or ""
        return e

    def env_chain(self, env):
        sp = self.splitter or "."
        out = []
        while env:
            out.append(env)
            env = env.rsplit(sp, 1)[0] if sp in env else ""
        return out

    def expected(self, svc_key, env):
        """(outcome, resolved_env, sorted pod keys) that the semantics demand."""
        svc = self.services[svc_key]
        members = [p for p in self.pods.values()
                   if svc.selector and all(p.labels.get(k) == v for k, v in svc.selector.items())]
        ready = [p for p in members if p.ready]

        def at(level):
            return sorted(p.key for p in ready if self.pod_env(p) == level)

        chain = self.env_chain(env)
        for i, level in enumerate(chain):
            pods = at(level)
            if pods:
                return ("own" if i == 0 else "fallback"), level, pods
        dflt = self.default_env or ""
        pods = at(dflt)
        if pods:
            return ("own" if dflt == env else "default"), dflt, pods
        return "refused", None, []

    # ------------------------------------------------------------------ agent

    def agent_cmd(self, extra_args=(), port=None):
        cmd = [self.bin, "run", "--manifests", self.manifest_dir,
               "--cgroup-root", self.cgroup_dir, "--bpffs", self.pin_dir,
               "--admin", "127.0.0.1:%d" % port, "--admin-socket", self.admin_socket]
        if self.default_env is not None:
            cmd += ["--default-env", self.default_env]
        if self.env_label != "virtual-env":
            cmd += ["--env-label", self.env_label]
        if self.splitter is not None:
            cmd += ["--splitter", self.splitter]
        if self.log_level:
            cmd += ["--log-level", self.log_level]
        if self.participation:
            cmd += ["--participation", self.participation]
        return cmd + list(extra_args)

    def _spawn_agent(self, extra_args):
        if not os.path.exists(os.path.join(self.manifest_dir, "cluster.yaml")):
            self.write_manifests()
        if not os.access(self.bin, os.X_OK):
            raise AgentError("envsteer binary not found or not executable: %s "
                             "(build it or set ENVSTEER_BIN)" % self.bin)
        self._agent_n += 1
        port = free_port()
        self.agent_log = os.path.join(self.log_dir, "agent-%d.log" % self._agent_n)
        self.agent_logs.append(self.agent_log)
        cmd = self.agent_cmd(extra_args, port)
        logf = open(self.agent_log, "w")
        logf.write("$ %s\n" % " ".join(cmd))
        logf.flush()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_die_with_parent(signal.SIGTERM))
        finally:
            logf.close()
        return proc, port

    def start_agent(self, extra_args=(), timeout=20.0):
        """Start `envsteer run` and wait (bounded) until GET /readyz answers 200."""
        if self.agent is not None and self.agent.poll() is None:
            raise AgentError("agent already running (pid %d)" % self.agent.pid)
        proc, port = self._spawn_agent(extra_args)
        self.agent = proc
        self.admin = "127.0.0.1:%d" % port
        deadline = time.monotonic() + timeout
        while True:
            rc = proc.poll()
            if rc is not None:
                raise AgentError("agent exited with %s before it was ready; log:\n%s"
                                 % (rc, self.agent_log_text()))
            try:
                code, _ = self.admin_get("/readyz", timeout=1.0)
                if code == 200:
                    return proc
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self.stop_agent(signal.SIGKILL)
                raise AgentError("agent not ready after %.0fs; log:\n%s"
                                 % (timeout, self.agent_log_text()))
            time.sleep(0.1)

    def run_agent_expect_exit(self, extra_args=(), timeout=20.0):
        """Start `envsteer run` expecting it to exit by itself; returns (rc, log text)."""
        proc, port = self._spawn_agent(extra_args)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _terminate(proc)
            raise AgentError("agent did not exit within %.0fs; log:\n%s"
                             % (timeout, self.agent_log_text()))
        return rc, self.agent_log_text()

    def agent_running(self):
        return self.agent is not None and self.agent.poll() is None

    def stop_agent(self, sig=signal.SIGTERM, timeout=15.0):
        """Signal the agent (by PID) and wait for it; SIGKILL after timeout. Returns rc."""
        proc = self.agent
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                self.agent = None
                raise AgentError("agent did not exit within %.0fs of signal %d; log:\n%s"
                                 % (timeout, sig, self.agent_log_text()))
        self.agent = None
        return proc.returncode

    def kill_agent(self):
        return self.stop_agent(signal.SIGKILL)

    def agent_log_text(self, limit=20000):
        return _read_file(self.agent_log, limit) if self.agent_log else ""

    def sighup_agent(self):
        if self.agent_running():
            os.kill(self.agent.pid, signal.SIGHUP)

    def admin_get(self, path, timeout=5.0):
        """GET on the agent's admin address (no proxies). Returns (status, body text)."""
        if not self.admin:
            raise AgentError("agent not started")
        host, port = self.admin.rsplit(":", 1)
        return _get(http.client.HTTPConnection(host, int(port), timeout=timeout), path)

    def socket_get(self, path, timeout=5.0, sock_path=None):
        """GET on the agent's admin unix socket. Returns (status, body text)."""
        return _get(UnixHTTPConnection(sock_path or self.admin_socket, timeout=timeout), path)

    def status_http(self):
        code, body = self.socket_get("/v1/status")
        if code != 200:
            raise AgentError("/v1/status -> %d: %s" % (code, body))
        return json.loads(body)

    def cli(self, *args, timeout=30.0):
        return subprocess.run([self.bin] + list(args), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def explain(self, frm, to, env=None, check=True):
        """`envsteer explain --json` against this node's agent; returns the parsed JSON."""
        args = ["explain", "--from", frm, "--to", to, "--json"]
        if env is not None:
            args += ["--env", env]
        args += ["--admin-socket", self.admin_socket]
        r = self.cli(*args)
        if r.returncode != 0:
            if check:
                raise AgentError("envsteer %s -> rc %d\nstdout: %s\nstderr: %s"
                                 % (" ".join(args), r.returncode, r.stdout, r.stderr))
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            raise AgentError("envsteer %s printed no JSON: %r (stderr %r)"
                             % (" ".join(args), r.stdout[:500], r.stderr[:500]))

    def explain_http(self, frm, to, env=None):
        q = {"from": frm, "to": to}
        if env is not None:
            q["env"] = env
        code, body = self.socket_get("/v1/explain?" + urllib.parse.urlencode(q))
        if code != 200:
            raise AgentError("/v1/explain -> %d: %s" % (code, body))
        return json.loads(body)

    def wait_explain(self, frm, to, pred, env=None, timeout=10.0):
        """Poll explain until pred(result) holds; bounded. Returns the last result."""
        box = {}

        def probe():
            try:
                box["r"] = self.explain(frm, to, env)
            except AgentError as e:
                box["r"] = {"error": str(e)}
                return False
            return pred(box["r"])

        try:
            wait_until(probe, timeout, 0.1, "explain %s -> %s" % (frm, to))
        except TimeoutError as e:
            raise TimeoutError("%s\nlast explain: %s" % (e, json.dumps(box.get("r"))))
        return box["r"]

    def status(self, json_out=True):
        args = ["status", "--bpffs", self.pin_dir,
                "--admin-socket", self.admin_socket if self.agent_running() else ""]
        if json_out:
            args.append("--json")
        return self.cli(*args)

    def uninstall(self, check=True):
        r = self.cli("uninstall", "--bpffs", self.pin_dir)
        if check and r.returncode != 0:
            raise AgentError("envsteer uninstall -> rc %d\n%s%s"
                             % (r.returncode, r.stdout, r.stderr))
        return r

    # ------------------------------------------------------------------ kernel state

    def attached_programs(self):
        """{cgroup dir: [bpftool entries]} for every dir of this node's subtree with programs."""
        found = {}
        for d in self._cgroup_dirs(self.cgroup_dir):
            r = subprocess.run(["bpftool", "-j", "cgroup", "show", d], capture_output=True,
                               text=True, timeout=10)
            if r.returncode != 0:
                continue
            text = r.stdout.strip()  # bpftool -j prints just a newline for "none"
            try:
                progs = json.loads(text) if text else []
            except ValueError:
                progs = [text]
            if progs:
                found[d] = progs
        return found

    def pins(self):
        """Every file left under the pin directory (relative paths)."""
        out = []
        for root, dirs, files in os.walk(self.pin_dir):
            for f in files + [d for d in dirs]:
                out.append(os.path.relpath(os.path.join(root, f), self.pin_dir))
        return sorted(out)

    def pinned_ids(self):
        """{pin path relative to the pin dir: (kind, kernel id)} for maps, links and programs."""
        out = {}
        for rel in self.pins():
            path = os.path.join(self.pin_dir, rel)
            if os.path.isdir(path):
                continue
            for kind in ("map", "link", "prog"):
                r = subprocess.run(["bpftool", "-j", kind, "show", "pinned", path],
                                   capture_output=True, text=True, timeout=10)
                if r.returncode == 0 and r.stdout.strip():
                    try:
                        out[rel] = (kind, json.loads(r.stdout).get("id"))
                        break
                    except (ValueError, AttributeError):
                        pass
            else:
                out[rel] = ("?", None)
        return out

    # ------------------------------------------------------------------ processes

    def _popen(self, argv, cgroup_dir, log_name, netns=None, stdout=None):
        cmd = ["sh", "-c", _JOIN_CGROUP, "sh", os.path.join(cgroup_dir, "cgroup.procs")]
        if netns is not None:
            cmd += netns.prefix()
        cmd += list(argv)
        log = open(os.path.join(self.log_dir, log_name), "a")
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                    stdout=stdout if stdout is not None else log,
                                    stderr=log, start_new_session=True, text=True,
                                    preexec_fn=_die_with_parent(signal.SIGKILL))
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def start_server(self, key, timeout=10.0, args=None, script=None):
        """Run podserver.py (or script, same options) for the pod inside the pod's cgroup (and
        netns, if any). args: extra server options (e.g. ["--keepalive"]); both are remembered
        for restarts."""
        pod = self.pod(key)
        if args is not None:
            pod.server_args = list(args)
        if script is not None:
            pod.server_script = script
        if pod.server is not None and pod.server.poll() is None:
            return pod.server
        ready = os.path.join(self.tmp, "ready-%s-%s" % (pod.ns, pod.name))
        if os.path.exists(ready):
            os.unlink(ready)
        argv = [PYTHON, getattr(pod, "server_script", None) or PODSERVER, "--pod", pod.key, "--env", pod.env() or "",
                "--ip", pod.ip, "--port", str(pod.port), "--ready-file", ready]
        argv += pod.server_args
        log_name = "server-%s-%s.log" % (pod.ns, pod.name)
        pod.server = self._popen(argv, pod.cgroup_dir, log_name, pod.netns)
        deadline = time.monotonic() + timeout
        while not os.path.exists(ready):
            if pod.server.poll() is not None:
                raise HarnessError("pod server %s exited (%s):\n%s" % (
                    pod.key, pod.server.returncode,
                    _read_file(os.path.join(self.log_dir, log_name), 5000)))
            if time.monotonic() > deadline:
                raise HarnessError("pod server %s not ready after %.0fs" % (pod.key, timeout))
            time.sleep(0.02)
        return pod.server

    def start_servers(self):
        for p in list(self.pods.values()):
            self.start_server(p)

    def stop_server(self, key):
        pod = self.pod(key)
        _terminate(pod.server)
        pod.server = None

    def _client_cgroup(self, pod):
        d = os.path.join(pod.cgroup_dir, "client-%d" % next(self._client_n))
        os.mkdir(d)
        return d

    def run_in_pod(self, key, argv, timeout=30.0, child_cgroup=True):
        """Run argv inside the pod (a child cgroup of its dir; its netns). CompletedProcess."""
        pod = self.pod(key)
        d = self._client_cgroup(pod) if child_cgroup else pod.cgroup_dir
        try:
            proc = self._popen(argv, d, "client-%s-%s.log" % (pod.ns, pod.name), pod.netns,
                               stdout=subprocess.PIPE)
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _terminate(proc)
                out, _ = proc.communicate()
                raise HarnessError("command in pod %s timed out after %.0fs: %s"
                                   % (pod.key, timeout, argv))
            finally:
                if proc in self.procs:
                    self.procs.remove(proc)
            return subprocess.CompletedProcess(argv, proc.returncode, out, "")
        finally:
            if child_cgroup:
                self._rmdir_cgroup(d)

    def client(self, key, *args, timeout=30.0):
        """Run podclient.py in the pod with args; returns its JSON result."""
        r = self.run_in_pod(key, [PYTHON, PODCLIENT] + list(args), timeout=timeout)
        return self._parse_client(r)

    @staticmethod
    def _parse_client(r):
        line = (r.stdout or "").strip().splitlines()
        if r.returncode != 0 or not line:
            raise HarnessError("podclient failed (rc %s): %r" % (r.returncode, r.stdout))
        return json.loads(line[-1])

    def request(self, key, ip, port=None, path="/", timeout=5.0):
        """One HTTP GET from the pod to ip:port (ip may be a Service)."""
        target = self._target(ip, port)
        return self.client(key, "--to", target, "--path", path, "--timeout", str(timeout))

    def call_chain(self, key, targets, timeout=10.0):
        """GET /call through a chain: the pod calls targets[0], which calls targets[1] ..."""
        ts = [self._target(t) for t in targets]
        path = "/call?" + "&".join("to=" + t for t in ts[1:]) if len(ts) > 1 else "/"
        return self.client(key, "--to", ts[0], "--path", path, "--timeout", str(timeout),
                           timeout=timeout + 20)

    def session(self, key, ip, exchanges, port=None, gap=0.05, timeout=10.0):
        """Raw HTTP on one connection (see podclient --session). exchanges: [{"pieces":
        [bytes...], "responses": n}]. key: the pod to run in, or None for a host process
        (this test process itself: in no cgroup of this node, so never steered)."""
        target = self._target(ip, port)
        if key is None:
            return _podclient().http_session(target, exchanges, timeout, gap)
        spec = self._spec_file(json.dumps([{
            "pieces": [base64.b64encode(p).decode() for p in ex["pieces"]],
            "responses": ex.get("responses", 1)} for ex in exchanges]))
        return self.client(key, "--to", target, "--session", spec, "--gap", str(gap),
                           "--timeout", str(timeout), timeout=timeout + 20)

    def echo(self, key, ip, payloads, port=None, timeout=10.0):
        """Non-HTTP bytes on one connection, echoed back (see podclient --echo); key None:
        from this (host) process."""
        target = self._target(ip, port)
        if key is None:
            return _podclient().echo_session(target, payloads, timeout)
        spec = self._spec_file(json.dumps([base64.b64encode(p).decode() for p in payloads]))
        return self.client(key, "--to", target, "--echo", spec, "--timeout", str(timeout),
                           timeout=timeout + 20)

    def _spec_file(self, text):
        """Write a podclient spec to a file of this node's temp dir; returns "@path"."""
        path = os.path.join(self.tmp, "spec-%d.json" % next(self._client_n))
        with open(path, "w") as f:
            f.write(text)
        return "@" + path

    def counters(self):
        """The datapath counters ({"header_found": n, ...}) from `envsteer status --json`."""
        r = self.status()
        if r.returncode != 0:
            raise AgentError("envsteer status -> rc %d: %s" % (r.returncode, r.stderr))
        return dict(json.loads(r.stdout).get("counters") or {})

    def udp(self, key, ip, port=None, connected=False, timeout=3.0):
        args = ["--to", self._target(ip, port), "--udp", "--timeout", str(timeout)]
        if connected:
            args.append("--connected")
        return self.client(key, *args)

    def start_loop(self, key, ip, port=None, count=1000, duration=3.0, connect_only=False):
        """Start a bounded connect loop in the pod in the background; returns a LoopClient."""
        pod = self.pod(key)
        d = self._client_cgroup(pod)
        started = os.path.join(self.tmp, "loop-%d.started" % next(self._client_n))
        argv = [PYTHON, PODCLIENT, "--to", self._target(ip, port), "--loop", str(count),
                "--duration", str(duration), "--ready-file", started]
        if connect_only:
            argv.append("--connect-only")
        proc = self._popen(argv, d, "loop-%s-%s.log" % (pod.ns, pod.name), pod.netns,
                           stdout=subprocess.PIPE)
        lc = LoopClient(self, proc, d, duration)
        wait_until(lambda: os.path.exists(started) or proc.poll() is not None, 10,
                   what="connect loop start")
        return lc

    def make_cgroup(self, name):
        """An extra (unmanaged) cgroup dir inside this node's subtree; removed by close()."""
        d = os.path.join(self.cgroup_dir, name)
        os.makedirs(d, exist_ok=True)
        return d

    def client_in_cgroup(self, cgroup_dir, *args, timeout=30.0, netns=None):
        """Run podclient.py with args in an arbitrary cgroup dir; returns its JSON result."""
        argv = [PYTHON, PODCLIENT] + list(args)
        proc = self._popen(argv, cgroup_dir, "client-cgroup.log", netns, stdout=subprocess.PIPE)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _terminate(proc)
            proc.communicate()
            raise HarnessError("client in %s timed out" % cgroup_dir)
        finally:
            if proc in self.procs:
                self.procs.remove(proc)
        return self._parse_client(subprocess.CompletedProcess(argv, proc.returncode, out, ""))

    def start_host_server(self, name, ip, port, timeout=10.0):
        """podserver.py as a plain host process (no cgroup of this node), e.g. on a ClusterIP."""
        ready = os.path.join(self.tmp, "ready-host-%s" % name)
        argv = [PYTHON, PODSERVER, "--pod", "host/" + name, "--ip", ip, "--port", str(port),
                "--ready-file", ready]
        log = open(os.path.join(self.log_dir, "host-server-%s.log" % name), "a")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True,
                                    preexec_fn=_die_with_parent(signal.SIGKILL))
        finally:
            log.close()
        self.procs.append(proc)
        wait_until(lambda: os.path.exists(ready) or proc.poll() is not None, timeout,
                   what="host server %s" % name)
        if proc.poll() is not None:
            raise HarnessError("host server %s exited:\n%s" % (name, _read_file(
                os.path.join(self.log_dir, "host-server-%s.log" % name), 3000)))
        return proc

    def stop_process(self, proc):
        _terminate(proc)
        if proc in self.procs:
            self.procs.remove(proc)

    def host_request(self, ip, port=None, path="/", timeout=5.0):
        """The same client, run as a host process (in no cgroup of this node)."""
        argv = [PYTHON, PODCLIENT, "--to", self._target(ip, port), "--path", path,
                "--timeout", str(timeout)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 20,
                           stdin=subprocess.DEVNULL)
        return self._parse_client(r)

    def _target(self, ip, port=None):
        if isinstance(ip, Service):
            return ip.addr(port)
        if isinstance(ip, str) and port is None and (ip.startswith("[") or ip.count(":") == 1):
            return ip
        if isinstance(ip, str) and port is None and ip in self.services:
            return self.services[ip].addr()
        return addr(ip, port)

    def add_netns(self, name):
        ns = NetNS("%s-%d-%s" % (PREFIX, os.getpid(), name))
        self.netns.append(ns)
        return ns

    # ------------------------------------------------------------------ cleanup

    @staticmethod
    def _cgroup_dirs(root):
        """root and all its descendants, deepest first."""
        if not os.path.isdir(root):
            return []
        out = []
        for dirpath, dirnames, _ in os.walk(root):
            out.append(dirpath)
        return sorted(out, key=lambda p: p.count("/"), reverse=True)

    def _rmdir_cgroup(self, d, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(d)
                return True
            except FileNotFoundError:
                return True
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    self.cleanup_problems.append("rmdir %s: %s" % (d, e))
                    return False
                time.sleep(0.02)

    def _remove_cgroup_tree(self, root):
        """Kill what is left in our own cgroup dirs (only our processes), remove dirs."""
        for d in self._cgroup_dirs(root):
            pids = _read_file(os.path.join(d, "cgroup.procs")).split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            if pids:
                try:
                    wait_until(lambda: not _read_file(os.path.join(d, "cgroup.procs")).split(),
                               5, what="cgroup %s empty" % d)
                except TimeoutError as e:
                    self.cleanup_problems.append(str(e))
            self._rmdir_cgroup(d)

    def close(self):
        """Stop everything this node started and remove everything it created."""
        if self._closed:
            return
        self._closed = True
        for p in self.pods.values():
            p.server = None
        for proc in reversed(self.procs):
            try:
                _terminate(proc, 3)
            except Exception as e:
                self.cleanup_problems.append("stop pid %d: %s" % (proc.pid, e))
        self.procs = []
        if self.agent is not None:
            try:
                self.stop_agent(signal.SIGTERM, timeout=10)
            except Exception as e:
                self.cleanup_problems.append("stop agent: %s" % e)
        if os.path.isdir(self.pin_dir) and os.access(self.bin, os.X_OK):
            try:
                r = self.uninstall(check=False)
                if r.returncode != 0:
                    self.cleanup_problems.append("uninstall rc %d: %s"
                                                 % (r.returncode, r.stderr.strip()[-500:]))
            except Exception as e:
                self.cleanup_problems.append("uninstall: %s" % e)
        for root in (self.cgroup_dir, self.remote_cgroup_dir):
            self._remove_cgroup_tree(root)
        if os.path.isdir(self.pin_dir):
            for dirpath, dirnames, filenames in os.walk(self.pin_dir, topdown=False):
                for f in filenames:
                    try:
                        os.unlink(os.path.join(dirpath, f))
                    except OSError as e:
                        self.cleanup_problems.append("unlink pin %s: %s" % (f, e))
                try:
                    os.rmdir(dirpath)
                except OSError as e:
                    self.cleanup_problems.append("rmdir %s: %s" % (dirpath, e))
        for ns in self.netns:
            ns.close()
        if os.environ.get("ENVSTEER_E2E_KEEP_LOGS"):
            sys.stderr.write("harness: logs of node %s kept in %s\n" % (self.name, self.log_dir))
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self in _LIVE_NODES:
            _LIVE_NODES.remove(self)

    def logs(self, limit=6000):
        """All logs of this node (agent logs last), for failure reports."""
        parts = []
        try:
            names = sorted(os.listdir(self.log_dir))
        except OSError:
            return ""
        for n in names:
            if n.startswith("agent-"):
                continue
            t = _read_file(os.path.join(self.log_dir, n), 2000)
            if t.strip():
                parts.append("== %s ==\n%s" % (n, t))
        for path in self.agent_logs:
            parts.append("== %s ==\n%s" % (os.path.basename(path), _read_file(path, limit)))
        return "\n".join(parts)


class LoopClient:
    def __init__(self, node, proc, cgroup_dir, duration):
        self.node, self.proc, self.cgroup_dir, self.duration = node, proc, cgroup_dir, duration

    def result(self, timeout=None):
        timeout = timeout if timeout is not None else self.duration * 4 + 30
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _terminate(self.proc)
            self.proc.communicate()
            raise HarnessError("connect loop did not finish in %.0fs" % timeout)
        finally:
            if self.proc in self.node.procs:
                self.node.procs.remove(self.proc)
            self.node._rmdir_cgroup(self.cgroup_dir)
        return Node._parse_client(subprocess.CompletedProcess([], self.proc.returncode, out, ""))


def sweep_stale(bin=None):
    """Remove what a killed earlier run left behind: envsteer-e2e-<pid>-* cgroup dirs and pin
    dirs whose <pid> is gone. Conservative: never kills anything; a cgroup dir that still has
    processes, or a pin dir an agent still holds, is left alone. Returns what was removed."""
    removed = []
    pat = re.compile(r"^%s-(\d+)-" % PREFIX)

    def dead(name):
        m = pat.match(name)
        if not m:
            return False
        return not os.path.exists("/proc/%s" % m.group(1))

    b = bin or agent_bin()
    pin_root = "/sys/fs/bpf"
    for name in sorted(os.listdir(pin_root)) if os.path.isdir(pin_root) else []:
        if dead(name) and os.access(b, os.X_OK):
            r = subprocess.run([b, "uninstall", "--bpffs", os.path.join(pin_root, name)],
                               capture_output=True, text=True, timeout=30)
            if r.returncode == 0:
                removed.append(os.path.join(pin_root, name))
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if dead(name):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
            removed.append("netns " + name)
    try:
        mount = cgroup2_mount()
    except HarnessError:
        return removed
    for name in sorted(os.listdir(mount)):
        top = os.path.join(mount, name)
        if not (dead(name) and os.path.isdir(top)):
            continue
        for d in Node._cgroup_dirs(top):
            if _read_file(os.path.join(d, "cgroup.procs")).split():
                break
            try:
                os.rmdir(d)
            except OSError:
                break
        else:
            removed.append(top)
    return removed


# --------------------------------------------------------------------------- result helpers

def chain_hops(result):
    """Flatten a call_chain() result into [{"pod", "peername", "ok", "errno"}...], one per hop."""
    hops = []
    if not result.get("ok"):
        return [{"pod": None, "ok": False, "errno": result.get("errno"),
                 "peername": result.get("peername")}]
    ans = result.get("answer")
    hops.append({"pod": ans.get("pod"), "ok": True, "peername": result.get("peername")})
    while isinstance(ans, dict) and "hop" in ans:
        hop = ans["hop"]
        nxt = ans.get("next")
        hops.append({"pod": nxt.get("pod") if isinstance(nxt, dict) and hop.get("ok") else None,
                     "ok": bool(hop.get("ok")), "errno": hop.get("errno"),
                     "peername": hop.get("peername")})
        ans = nxt if hop.get("ok") else None
    return hops


def frontend(explain, address=None, protocol="TCP"):
    """The frontends[] entry of an explain result for address ('ip:port') and protocol."""
    fes = explain.get("frontends") or []
    for fe in fes:
        a = fe.get("address", "")
        if address is not None and not a.startswith(address + "/"):
            continue
        if not a.upper().endswith("/" + protocol.upper()):
            continue
        return fe
    raise HarnessError("no frontend %s/%s in explain result: %s"
                       % (address, protocol, json.dumps(explain)))


def json_documents(text):
    """The JSON documents of a stream of them, one after another (what curl prints for several
    URLs, `kubectl ... -o json` for several objects)."""
    dec = json.JSONDecoder()
    out, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = dec.raw_decode(text, i)
        out.append(obj)


def http_request(path="/", headers=(), host="envsteer-e2e", method="GET", version="HTTP/1.1",
                 body=b"", keepalive=True):
    """The bytes of one HTTP/1.x request: headers is a list of (name, value) pairs or raw
    header lines (str), sent in order after Host; Content-Length is added for a body."""
    lines = ["%s %s %s" % (method, path, version), "Host: " + host]
    for h in headers:
        lines.append(h if isinstance(h, str) else "%s: %s" % h)
    if body:
        lines.append("Content-Length: %d" % len(body))
    if not keepalive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def backend_pods(fe):
    return sorted(b.get("pod") for b in fe.get("backends") or [])
