"""The cluster install (daemonset/) and the node-level install (packaging/, Dockerfile),
checked without a cluster. There is no API server here and nothing in this module talks to
one: kubectl only renders and parses (offline), the agent only gets as far as the first step
that would need a cluster or a manifest file, which comes before it touches the kernel.

- `kubectl kustomize daemonset/` renders exactly the expected objects, every document parses
  (kubectl's own decoder: `kubectl label --local -o json`), every field is a Kubernetes API
  field, and the image is overridable by kustomize.
- RBAC: get/list/watch only, on exactly what `envsteer run --kubernetes` reads.
- The DaemonSet gives the agent what it needs (NODE_NAME, the host's cgroup2 and bpffs,
  tolerations, rolling updates) and only the capabilities BPF needs.
- The admin surface (README "Security"): health and metrics on the pod's loopback, the API on
  a unix socket in an emptyDir, probes that exec `envsteer health` on that socket, only
  /metrics and the HTTP/2 endpoint on the pod IP, and NetworkPolicies that admit the metrics
  port only from named sources and the HTTP/2 port only from participating pods.
- The agent accepts the DaemonSet's args with the ConfigMap's file, and the packaged config.
- The systemd unit passes `systemd-analyze verify` as installed by `cmake --install`.
- The Dockerfile's runtime stage installs the package of every library the binary links.
"""
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

import harness

REPO = harness.REPO
DAEMONSET_DIR = os.path.join(REPO, "daemonset")
PACKAGING_DIR = os.path.join(REPO, "packaging")

EXPECTED_KINDS = sorted([
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("v1", "ConfigMap"),
    ("apps/v1", "DaemonSet"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
])
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
# What the Kubernetes source reads (agent/sources/kubernetes.cpp), and nothing else.
EXPECTED_RBAC = {
    ("", "services"),
    ("", "pods"),
    ("", "namespaces"),
    ("discovery.k8s.io", "endpointslices"),
    ("env.alibaba.com", "virtualenvironments"),
}
# The only write: Events about objects the agent skips (create, nothing else).
EXPECTED_RBAC_WRITE = {("", "events"): ["create"]}
# BPF, NET_ADMIN, PERFMON: each one is needed to load the programs (checked: the e2e suite
# fails without any one of them); SYS_ADMIN and SYS_PTRACE: setns() into a pod's network
# namespace through a pidfd (the relay's upstreams and client resets; test_topology.py runs
# an agent under exactly the DaemonSet's set); SYS_RESOURCE only raises RLIMIT_MEMLOCK on
# kernels < 5.11.
REQUIRED_CAPS = {"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"}
OPTIONAL_CAPS = {"SYS_RESOURCE"}

BPFFS = "/sys/fs/bpf"
CGROUPFS = "/sys/fs/cgroup"
NODE = "node-under-test"


# ---------------------------------------------------------------------------- helpers

def kubectl_bin():
    k = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not k:
        pytest.fail("kubectl not found: install Debian's kubernetes-client package (or any "
                    "kubectl; set $KUBECTL to use one outside PATH)", pytrace=False)
    return k


def run_kubectl(args, tmp, input=None):
    """kubectl, isolated from any kubeconfig of this machine. It never needs a server here;
    the server is pinned to a closed loopback port in case a kubectl wrapper probes one."""
    kubeconfig = os.path.join(tmp, "kubeconfig-empty")
    open(kubeconfig, "w").close()
    env = dict(os.environ, KUBECONFIG=kubeconfig, HOME=tmp)
    r = subprocess.run([kubectl_bin()] + args, input=input, capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, "kubectl %s failed (%d):\n%s" % (" ".join(args), r.returncode, r.stderr)
    return r.stdout


def json_stream(text):
    """Objects of a stream of JSON documents (what `kubectl ... -o json` prints for several
    objects), with `kind: List` flattened."""
    out = []
    for obj in harness.json_documents(text):
        out.extend(obj.get("items", []) if obj.get("kind") == "List" else [obj])
    return out


def yaml_documents(text):
    docs = re.split(r"^---\s*$", text, flags=re.M)
    return [d for d in docs if d.strip() and not all(
        not ln.strip() or ln.lstrip().startswith("#") for ln in d.splitlines())]


def kubectl_parse(yaml_text, tmp):
    # `label --local` decodes the objects with kubectl's own YAML decoder and prints them
    # as JSON, without a server; removing a label that is not there changes nothing.
    out = run_kubectl(["label", "--local", "--server=http://127.0.0.1:1", "-f", "-", "-o", "json",
                       "envsteer.io/parse-check-"], tmp, input=yaml_text)
    return json_stream(out)


def one(objs, kind):
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, "expected one %s, got %d" % (kind, len(found))
    return found[0]


def agent_container(ds):
    cs = [c for c in ds["spec"]["template"]["spec"]["containers"] if (c.get("args") or [""])[0] == "run"]
    assert len(cs) == 1, "expected one container running `envsteer run`"
    return cs[0]


def parse_flags(args):
    """--flag=value / --flag value / --switch -> {flag: value or True}; repeated flags: last."""
    flags, i = {}, 1  # args[0] is the subcommand
    while i < len(args):
        a = args[i]
        assert a.startswith("--"), "unexpected positional argument %r" % a
        if "=" in a:
            k, v = a.split("=", 1)
            flags[k] = v
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            flags[a] = args[i + 1]
            i += 1
        else:
            flags[a] = True
        i += 1
    return flags


def resolve_port(container, port):
    if isinstance(port, int):
        return port
    if str(port).isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError("probe port %r names no port of container %s" % (port, container["name"]))


def settings_source():
    with open(os.path.join(REPO, "agent", "settings.cpp")) as f:
        return f.read()


def known_settings():
    """The top-level keys `envsteer run --config` accepts: the keys agent/settings.cpp reads
    (`read(root, "<key>", ...)`; the file is rejected on any other key)."""
    keys = set(re.findall(r'read\(root, "([A-Za-z][A-Za-z0-9]*)"', settings_source())) | {"limits"}
    assert {"bpffs", "envLabel", "upstreamIdleMs"} <= keys, keys
    return keys


def known_limits():
    keys = set(re.findall(r'lread\("([a-z]+)"', settings_source()))
    assert "frontends" in keys, keys
    return keys


def config_keys(text):
    """(set keys, commented-out keys, limits keys set or commented) of a settings file.
    Commented-out settings are written `#   key: value` (nested: `#     key: value`)."""
    key = r"([A-Za-z][A-Za-z0-9]*):"
    top = set(re.findall(r"^" + key, text, re.M))
    commented = set(re.findall(r"^#   " + key, text, re.M))
    nested = set(re.findall(r"^  " + key, text, re.M)) | set(re.findall(r"^#     " + key, text, re.M))
    return top, commented, nested


def linux_capabilities():
    with open("/usr/include/linux/capability.h") as f:
        names = set(re.findall(r"^#define\s+CAP_([A-Z_]+)\s+\d+\s*$", f.read(), re.M))
    assert {"BPF", "PERFMON", "NET_ADMIN"} <= names
    return names


def agent_env():
    """A minimal environment: no KUBERNETES_SERVICE_HOST/PORT, whatever this machine has."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NODE_NAME": NODE}


def run_agent(argv, timeout=30):
    b = harness.agent_bin()
    r = subprocess.run([b] + argv, capture_output=True, text=True, env=agent_env(),
                       stdin=subprocess.DEVNULL, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def mtmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("install"))


@pytest.fixture(scope="module")
def rendered(mtmp):
    return run_kubectl(["kustomize", DAEMONSET_DIR], mtmp)


@pytest.fixture(scope="module")
def objs(rendered, mtmp):
    return kubectl_parse(rendered, mtmp)


@pytest.fixture(scope="module")
def ds(objs):
    return one(objs, "DaemonSet")


@pytest.fixture(scope="module")
def cm_config(objs, ds):
    """(ConfigMap, key, file text) of the --config file the DaemonSet passes."""
    c = agent_container(ds)
    path = parse_flags(c["args"]).get("--config")
    assert isinstance(path, str), "the agent container has no --config FILE"
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    for m in c.get("volumeMounts", []):
        v = vols[m["name"]]
        prefix = m["mountPath"].rstrip("/") + "/"
        if "configMap" in v and path.startswith(prefix):
            rel = path[len(prefix):]
            items = v["configMap"].get("items")
            key = next((i["key"] for i in items if i["path"] == rel), None) if items else rel
            cm = one(objs, "ConfigMap")
            assert v["configMap"]["name"] == cm["metadata"]["name"]
            assert key in cm.get("data", {}), "ConfigMap has no key %r" % key
            return cm, key, cm["data"][key]
    raise AssertionError("--config %s is not a file of a mounted ConfigMap" % path)


# ---------------------------------------------------------------------------- rendering

def test_kustomize_renders_exactly_the_expected_objects(rendered, objs):
    docs = yaml_documents(rendered)
    assert len(docs) == len(objs), "kubectl parsed %d objects out of %d documents" % (len(objs), len(docs))
    assert sorted((o["apiVersion"], o["kind"]) for o in objs) == EXPECTED_KINDS
    for o in objs:
        assert re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", o["metadata"]["name"]), o["metadata"]


def test_namespaced_objects_are_in_the_namespace(objs):
    ns = one(objs, "Namespace")["metadata"]
    # hostPath volumes and a privileged init container: Pod Security level "privileged".
    assert ns.get("labels", {}).get("pod-security.kubernetes.io/enforce") == "privileged"
    for o in objs:
        if o["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in o["metadata"], o["metadata"]
        else:
            assert o["metadata"].get("namespace") == ns["name"], o["metadata"]


def test_clusterrole_reads_exactly_what_the_agent_reads_and_only_creates_events(objs):
    role = one(objs, "ClusterRole")
    assert "aggregationRule" not in role
    granted, written = set(), {}
    for r in role["rules"]:
        assert set(r) <= {"apiGroups", "resources", "verbs"}, "unexpected rule fields: %s" % r
        for g in r["apiGroups"]:
            for res in r["resources"]:
                if sorted(r["verbs"]) == ["get", "list", "watch"]:
                    granted.add((g, res))
                else:
                    written[(g, res)] = sorted(r["verbs"])
    assert granted == EXPECTED_RBAC
    assert written == EXPECTED_RBAC_WRITE


def test_binding_gives_the_role_to_the_daemonsets_service_account(objs, ds):
    b = one(objs, "ClusterRoleBinding")
    sa = one(objs, "ServiceAccount")["metadata"]
    assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": one(objs, "ClusterRole")["metadata"]["name"]}
    assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}]
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["name"]
    assert ds["metadata"]["namespace"] == sa["namespace"]


# ---------------------------------------------------------------------------- DaemonSet

def test_daemonset_scheduling_and_updates(ds):
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    sel = spec["selector"]["matchLabels"]
    assert sel and all(spec["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    ru = spec["updateStrategy"]["rollingUpdate"]
    assert str(ru["maxUnavailable"]) == "1"
    # Two agents on one node would fight over the pin-directory lock.
    assert str(ru.get("maxSurge", 0)) == "0"
    assert pod["priorityClassName"] == "system-node-critical"
    assert isinstance(pod["terminationGracePeriodSeconds"], int) and pod["terminationGracePeriodSeconds"] > 0
    # Every taint tolerated: an operator-Exists toleration without key and effect.
    assert {"operator": "Exists"} in pod["tolerations"]
    for k in ("hostNetwork", "hostIPC"):
        assert not pod.get(k), "%s is not needed by the agent" % k
    # the pods' processes, through which the agent enters their network namespaces
    assert pod.get("hostPID") is True


def test_daemonset_agent_command_line(ds):
    c = agent_container(ds)
    flags = parse_flags(c["args"])
    assert flags.get("--kubernetes") is True
    assert "--manifests" not in flags
    assert "--cleanup-on-exit" not in flags, "pins must survive restarts and upgrades"
    assert isinstance(flags.get("--config"), str)
    env = {e["name"]: e for e in c.get("env", [])}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    if "--node-name" in flags:
        assert flags["--node-name"] == "$(NODE_NAME)"


AGENT_DEFAULT_ADMIN = "127.0.0.1:9966"
AGENT_DEFAULT_SOCKET = "/run/envsteer/admin.sock"
LOOPBACK_HOSTS = ("127.0.0.1", "[::1]", "localhost")


def admin_surface(c):
    """(--admin, --admin-socket, --metrics-bind) of the agent container, defaults applied."""
    flags = parse_flags(c["args"])
    return (flags.get("--admin", AGENT_DEFAULT_ADMIN), flags.get("--admin-socket", AGENT_DEFAULT_SOCKET),
            flags.get("--metrics-bind", ""))


def h2_port(c):
    """The HTTP/2 endpoint's port (--h2-listen), or None when it is off."""
    listen = parse_flags(c["args"]).get("--h2-listen", "")
    return int(listen.rsplit(":", 1)[1]) if listen else None


def test_daemonset_admin_tcp_is_loopback_only(ds):
    c = agent_container(ds)
    admin, _, metrics_bind = admin_surface(c)
    if admin:
        host, _ = admin.rsplit(":", 1)
        assert host in LOOPBACK_HOSTS, "--admin %s: health and metrics stay on the pod's loopback" % admin
    ports = c.get("ports", [])
    # on the pod IP: the metrics port (with --metrics-bind) and the HTTP/2 endpoint (with
    # --h2-listen), each declared and named for the NetworkPolicies; nothing else
    want = set()
    if metrics_bind:
        want.add(int(metrics_bind.rsplit(":", 1)[1]))
    if h2_port(c) is not None:
        want.add(h2_port(c))
    assert sorted((p["containerPort"], p.get("protocol", "TCP")) for p in ports) == \
        sorted((p, "TCP") for p in want), ports
    assert all(p.get("name") for p in ports), ports
    if not metrics_bind:
        return
    _, port = metrics_bind.rsplit(":", 1)
    ann = ds["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in ann:
        assert ann["prometheus.io/port"] == port, ann


def test_daemonset_h2_endpoint_listens_on_the_pod_ip(ds):
    """The HTTP/2 endpoint is on: on the pod's own IP from the downward API (the programs divert
    pods' connections to that address; the agent does not use the host network), on the
    declared port named h2."""
    c = agent_container(ds)
    assert ds["spec"]["template"]["spec"].get("hostNetwork") is not True
    listen = parse_flags(c["args"]).get("--h2-listen", "")
    m = re.fullmatch(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\):(\d+)", listen)
    assert m, "--h2-listen must be $(POD_IP):PORT, got %r" % listen
    env = {e["name"]: e for e in c.get("env", [])}
    assert env[m.group(1)]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", env.get(m.group(1))
    assert resolve_port(c, "h2") == int(m.group(2))


def test_daemonset_admin_socket_is_private_to_the_container(ds):
    c = agent_container(ds)
    _, sock, _ = admin_surface(c)
    assert sock.startswith("/"), "the admin socket must be enabled: the probes and the CLI use it"
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    # the root filesystem is read-only: the socket's directory is a writable volume of its own,
    # an emptyDir of this pod (not a host path other pods or the node could mount)
    mounts = [m for m in c.get("volumeMounts", []) if os.path.dirname(sock) == m["mountPath"].rstrip("/")]
    assert len(mounts) == 1, "no volume mounted at %s" % os.path.dirname(sock)
    assert not mounts[0].get("readOnly"), mounts[0]
    assert "emptyDir" in vols[mounts[0]["name"]], vols[mounts[0]["name"]]
    pod = ds["spec"]["template"]["spec"]
    for x in pod.get("initContainers", []) + pod["containers"]:
        if x is not c:
            assert all(m["name"] != mounts[0]["name"] for m in x.get("volumeMounts", [])), x["name"]


def test_daemonset_probes_exec_envsteer_health_on_the_socket(ds):
    c = agent_container(ds)
    _, sock, _ = admin_surface(c)
    for probe, ready in (("livenessProbe", False), ("readinessProbe", True), ("startupProbe", False)):
        if probe == "startupProbe" and probe not in c:
            continue
        p = c[probe]
        assert set(p) & {"httpGet", "tcpSocket", "grpc"} == set(), \
            "%s: nothing of the admin surface listens on the pod IP for the kubelet" % probe
        cmd = p["exec"]["command"]
        assert os.path.basename(cmd[0]) == "envsteer" and cmd[1] == "health", (probe, cmd)
        assert ("--ready" in cmd) == ready, (probe, cmd)
        flags = parse_flags(cmd[1:])
        assert flags.get("--admin-socket", AGENT_DEFAULT_SOCKET) == sock, (probe, cmd)
        # the probe's own timeout fits the kubelet's
        assert float(flags.get("--timeout", 3)) < p.get("timeoutSeconds", 1), (probe, p)


def test_daemonset_probe_commands_are_accepted_by_the_cli(ds, mtmp):
    """Each probe's command line parses; with no agent behind the socket it fails (exit 1)
    and says why, as a probe should."""
    c = agent_container(ds)
    absent = os.path.join(mtmp, "no-agent", "admin.sock")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe not in c:
            continue
        cmd = list(c[probe]["exec"]["command"][1:])
        flags = parse_flags(cmd)
        if "--admin-socket" in flags:
            cmd = [("--admin-socket=" + absent if a.startswith("--admin-socket") else a) for a in cmd]
            cmd = [a for i, a in enumerate(cmd) if not (i > 0 and cmd[i - 1] == "--admin-socket")]
        else:
            cmd += ["--admin-socket", absent]
        rc, out = run_agent(cmd)
        assert rc == 1 and "agent not reachable at " + absent in out, (probe, cmd, out)


def participation_selectors(cm_config):
    """The labels that make a pod take part (configmap.yaml): the env label (any value) and the
    participation selector (KEY=VALUE), as NetworkPolicy podSelectors."""
    cfg = yaml.safe_load(cm_config[2]) or {}
    assert cfg.get("participation", "selected") == "selected", \
        "participation: all - the HTTP/2 policy must then admit every pod"
    key, _, value = cfg.get("participationSelector", "envsteer.io/enabled=true").partition("=")
    return [{"matchExpressions": [{"key": cfg.get("envLabel", "virtual-env"), "operator": "Exists"}]},
            {"matchLabels": {key.strip(): value.strip()}}]


def test_networkpolicies_admit_metrics_from_named_sources_and_h2_from_participating_pods(objs, ds, cm_config):
    c = agent_container(ds)
    _, _, metrics_bind = admin_surface(c)
    metrics_port = int(metrics_bind.rsplit(":", 1)[1]) if metrics_bind else None
    h2 = h2_port(c)
    pols = [o for o in objs if o["kind"] == "NetworkPolicy"]
    tmpl_labels = ds["spec"]["template"]["metadata"]["labels"]
    mine = [p for p in pols if all(tmpl_labels.get(k) == v
                                   for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())
            and p["spec"]["podSelector"].get("matchLabels")]
    assert mine, "no NetworkPolicy selects the agent's pods"
    admitted = set()
    for p in mine:
        spec = p["spec"]
        assert "Ingress" in spec.get("policyTypes", []), spec
        for rule in spec.get("ingress", []):
            # never "from anywhere": every rule names its sources
            assert rule.get("from"), "ingress rule without from: %s" % rule
            assert rule.get("ports"), "ingress rule for every port: %s" % rule
            ports = set()
            for port in rule["ports"]:
                assert port.get("protocol", "TCP") == "TCP"
                ports.add(resolve_port(c, port["port"]))
            assert ports <= {metrics_port, h2} - {None}, "a rule for a port nothing serves: %s" % rule
            assert len(ports) == 1, "one rule per port (their sources differ): %s" % rule
            admitted |= ports
            for src in rule["from"]:
                assert "ipBlock" not in src or src["ipBlock"].get("cidr") not in ("0.0.0.0/0", "::/0"), src
                if ports == {h2}:
                    # pods of every namespace, but only those that take part: the ones whose
                    # connections the programs divert there
                    assert "podSelector" in src and "ipBlock" not in src, src
                    assert src["podSelector"] in participation_selectors(cm_config), src
                else:
                    assert src.get("namespaceSelector", {"x": 1}) != {}, "every namespace: %s" % src
    assert admitted == {metrics_port, h2} - {None}, admitted
    # every participating pod is admitted to the HTTP/2 port
    h2_sources = [src["podSelector"] for p in mine for rule in p["spec"].get("ingress", [])
                  for src in rule["from"] if {resolve_port(c, x["port"]) for x in rule["ports"]} == {h2}]
    assert all(sel in h2_sources for sel in participation_selectors(cm_config)), h2_sources


def test_daemonset_host_mounts(ds, cm_config):
    pod = ds["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    c = agent_container(ds)

    def host_mount(container, host_path):
        for m in container.get("volumeMounts", []):
            hp = vols[m["name"]].get("hostPath")
            if hp and hp["path"] == host_path:
                return m
        return None

    # The host's cgroup2 hierarchy where the agent looks for the cgroup2 mount.
    cg = host_mount(c, CGROUPFS)
    assert cg and cg["mountPath"] == CGROUPFS, cg
    # The host's bpffs, where the pins outlive the pod.
    bpf = host_mount(c, BPFFS)
    assert bpf and bpf["mountPath"] == BPFFS, bpf
    assert bpf.get("mountPropagation") in ("HostToContainer", "Bidirectional"), bpf
    m = re.search(r"^bpffs:\s*(\S+)", cm_config[2], re.M)
    pin_dir = m.group(1) if m else "/sys/fs/bpf/envsteer"
    assert pin_dir.startswith(BPFFS + "/"), pin_dir
    # Some container makes sure bpffs is mounted on the host (Bidirectional), and the API
    # allows Bidirectional only to privileged containers.
    bidi = []
    for x in pod.get("initContainers", []) + pod["containers"]:
        for mm in x.get("volumeMounts", []):
            if mm.get("mountPropagation") == "Bidirectional":
                assert x.get("securityContext", {}).get("privileged") is True, x["name"]
                bidi.append((x["name"], vols[mm["name"]].get("hostPath", {}).get("path")))
    assert any(p == BPFFS for _, p in bidi), bidi


def test_daemonset_agent_privileges_are_what_bpf_needs(ds):
    c = agent_container(ds)
    sc = c["securityContext"]
    assert sc.get("privileged") is not True
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("runAsUser") == 0, "added capabilities reach only uid 0"
    caps = sc["capabilities"]
    assert caps["drop"] == ["ALL"]
    add = set(caps["add"])
    assert REQUIRED_CAPS <= add and add <= REQUIRED_CAPS | OPTIONAL_CAPS, add
    assert add <= linux_capabilities(), add - linux_capabilities()
    res = c["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"], res


def test_daemonset_image_is_the_kustomize_image(ds, mtmp):
    pod = ds["spec"]["template"]["spec"]
    images = {x["image"] for x in pod.get("initContainers", []) + pod["containers"]}
    assert len(images) == 1 and images.pop().startswith("envsteer:"), images
    overlay = os.path.join(mtmp, "overlay")
    os.makedirs(overlay, exist_ok=True)
    with open(os.path.join(overlay, "kustomization.yaml"), "w") as f:
        # bases: (deprecated, still read) rather than resources: so that the kustomize of
        # older kubectl builds (Debian 12's kubernetes-client) reads it too.
        f.write("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                "bases:\n  - %s\nimages:\n  - name: envsteer\n"
                "    newName: registry.example.com/team/envsteer\n    newTag: \"9.9.9\"\n"
                % os.path.relpath(DAEMONSET_DIR, overlay))
    out = kubectl_parse(run_kubectl(["kustomize", overlay], mtmp), mtmp)
    pod = one(out, "DaemonSet")["spec"]["template"]["spec"]
    assert {x["image"] for x in pod.get("initContainers", []) + pod["containers"]} == \
        {"registry.example.com/team/envsteer:9.9.9"}


# ---------------------------------------------------------------------------- API fields

def _leaf(*names):
    return {n: None for n in names}


_META = _leaf("name", "namespace", "labels", "annotations", "generateName", "finalizers",
              "ownerReferences")
_SECCOMP = _leaf("type", "localhostProfile")
_PROBE = dict(_leaf("tcpSocket", "grpc", "initialDelaySeconds", "periodSeconds",
                    "timeoutSeconds", "successThreshold", "failureThreshold",
                    "terminationGracePeriodSeconds"),
              httpGet=_leaf("path", "port", "host", "scheme", "httpHeaders"),
              exec=_leaf("command"))
_CONTAINER = dict(
    _leaf("name", "image", "imagePullPolicy", "command", "args", "workingDir", "envFrom",
          "volumeDevices", "lifecycle", "terminationMessagePath", "terminationMessagePolicy",
          "stdin", "stdinOnce", "tty", "resizePolicy", "restartPolicy"),
    env=dict(_leaf("name", "value"),
             valueFrom=dict(_leaf("resourceFieldRef", "configMapKeyRef", "secretKeyRef"),
                            fieldRef=_leaf("apiVersion", "fieldPath"))),
    ports=_leaf("name", "containerPort", "protocol", "hostPort", "hostIP"),
    resources=_leaf("requests", "limits", "claims"),
    livenessProbe=_PROBE, readinessProbe=_PROBE, startupProbe=_PROBE,
    securityContext=dict(
        _leaf("privileged", "allowPrivilegeEscalation", "readOnlyRootFilesystem", "runAsUser",
              "runAsGroup", "runAsNonRoot", "procMount", "windowsOptions"),
        capabilities=_leaf("add", "drop"), seccompProfile=_SECCOMP, appArmorProfile=_SECCOMP,
        seLinuxOptions=_leaf("user", "role", "type", "level")),
    volumeMounts=_leaf("name", "mountPath", "readOnly", "subPath", "subPathExpr",
                       "mountPropagation", "recursiveReadOnly"),
)
_POD = dict(
    _leaf("serviceAccountName", "automountServiceAccountToken", "priorityClassName", "priority",
          "preemptionPolicy", "terminationGracePeriodSeconds", "hostNetwork", "hostPID",
          "hostIPC", "hostUsers", "nodeSelector", "nodeName", "affinity", "dnsPolicy",
          "dnsConfig", "securityContext", "restartPolicy", "imagePullSecrets",
          "enableServiceLinks", "schedulerName", "runtimeClassName", "shareProcessNamespace",
          "topologySpreadConstraints", "hostAliases", "readinessGates", "os",
          "activeDeadlineSeconds", "schedulingGates", "resourceClaims"),
    tolerations=_leaf("key", "operator", "value", "effect", "tolerationSeconds"),
    initContainers=_CONTAINER, containers=_CONTAINER,
    volumes=dict(_leaf("name", "secret", "projected", "downwardAPI"),
                 emptyDir=_leaf("medium", "sizeLimit"),
                 hostPath=_leaf("path", "type"),
                 configMap=dict(_leaf("name", "defaultMode", "optional"),
                                items=_leaf("key", "path", "mode"))),
)
_TOP = _leaf("apiVersion", "kind")
SCHEMAS = {
    "Namespace": dict(_TOP, metadata=_META, spec=None),
    "ServiceAccount": dict(_TOP, metadata=_META, automountServiceAccountToken=None,
                           imagePullSecrets=None, secrets=None),
    "ClusterRole": dict(_TOP, metadata=_META, aggregationRule=None,
                        rules=_leaf("apiGroups", "resources", "verbs", "resourceNames",
                                    "nonResourceURLs")),
    "ClusterRoleBinding": dict(_TOP, metadata=_META, roleRef=_leaf("apiGroup", "kind", "name"),
                               subjects=_leaf("kind", "name", "namespace", "apiGroup")),
    "ConfigMap": dict(_TOP, metadata=_META, data=None, binaryData=None, immutable=None),
    "NetworkPolicy": dict(_TOP, metadata=_META, spec=dict(
        _leaf("policyTypes", "egress"),
        podSelector=_leaf("matchLabels", "matchExpressions"),
        ingress=dict(
            ports=_leaf("port", "endPort", "protocol"),
            **{"from": dict(ipBlock=_leaf("cidr", "except"),
                            namespaceSelector=_leaf("matchLabels", "matchExpressions"),
                            podSelector=_leaf("matchLabels", "matchExpressions"))}))),
    "DaemonSet": dict(_TOP, metadata=_META, spec=dict(
        _leaf("minReadySeconds", "revisionHistoryLimit"),
        selector=_leaf("matchLabels", "matchExpressions"),
        template=dict(metadata=_META, spec=_POD),
        updateStrategy=dict(type=None, rollingUpdate=_leaf("maxUnavailable", "maxSurge")))),
}
ENUMS = {
    "mountPropagation": {"None", "HostToContainer", "Bidirectional"},
    "imagePullPolicy": {"Always", "IfNotPresent", "Never"},
    "operator": {"Exists", "Equal"},
    "protocol": {"TCP", "UDP", "SCTP"},
}
HOSTPATH_TYPES = {"", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket",
                  "CharDevice", "BlockDevice"}


def _check_fields(obj, schema, path, problems):
    if schema is None:
        return
    if isinstance(obj, list):
        for i, x in enumerate(obj):
            _check_fields(x, schema, "%s[%d]" % (path, i), problems)
        return
    if not isinstance(obj, dict):
        problems.append("%s: expected an object, got %r" % (path, obj))
        return
    for k, v in obj.items():
        if k not in schema:
            problems.append("%s.%s: not a field of this API object" % (path, k))
            continue
        if k in ENUMS and v not in ENUMS[k]:
            problems.append("%s.%s: %r is not one of %s" % (path, k, v, sorted(ENUMS[k])))
        _check_fields(v, schema[k], path + "." + k, problems)


def test_every_field_is_a_kubernetes_api_field(objs):
    problems = []
    for o in objs:
        _check_fields(o, SCHEMAS[o["kind"]], o["kind"], problems)
    pod = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    for v in pod["volumes"]:
        if "hostPath" in v and v["hostPath"].get("type", "") not in HOSTPATH_TYPES:
            problems.append("hostPath type %r" % v["hostPath"]["type"])
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        for p in ("seccompProfile", "appArmorProfile"):
            if p in sc and sc[p]["type"] not in ("RuntimeDefault", "Unconfined", "Localhost"):
                problems.append("%s %s type %r" % (c["name"], p, sc[p]["type"]))
        for res in c.get("resources", {}).values():
            for name, q in res.items():
                if not re.match(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi)?$", str(q)):
                    problems.append("%s resource %s: quantity %r" % (c["name"], name, q))
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------- settings

def test_configmap_settings_are_agent_settings(cm_config):
    text = cm_config[2]
    top, commented, nested = config_keys(text)
    known = known_settings()
    assert top, "the ConfigMap's settings file sets nothing"
    assert top <= known, "unknown settings: %s" % sorted(top - known)
    assert commented <= known, "commented-out unknown settings: %s" % sorted(commented - known)
    assert nested <= known_limits(), "unknown limits: %s" % sorted(nested - known_limits())
    assert not re.search(r"^cleanupOnExit:\s*true", text, re.M), "pins must survive restarts"
    assert "manifests" not in top, "the DaemonSet runs with --kubernetes: one source only"


def test_configmap_settings_are_accepted_by_the_agent(cm_config, mtmp):
    """The agent reads and validates the file, then stops at the missing manifest path,
    before it touches the kernel."""
    cfg = os.path.join(mtmp, "cm-config.yaml")
    with open(cfg, "w") as f:
        f.write(cm_config[2])
    absent = os.path.join(mtmp, "no-manifests-here")
    rc, out = run_agent(["run", "--config", cfg, "--manifests", absent, "--admin", ""])
    assert rc == 1 and absent in out, out


def test_daemonset_args_are_accepted_by_the_agent(ds, cm_config, mtmp):
    """The container's args as the kubelet passes them ($(VAR) expanded, the ConfigMap at its
    mount path): the agent parses them, loads and validates the settings, finds the cgroup2
    mount and stops at the in-cluster configuration, which this machine does not have."""
    c = agent_container(ds)
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    root = os.path.join(mtmp, "pod-root")
    mapping = {}
    for m in c.get("volumeMounts", []):
        cmv = vols[m["name"]].get("configMap")
        if cmv:
            d = root + m["mountPath"]
            os.makedirs(d, exist_ok=True)
            items = cmv.get("items") or [{"key": cm_config[1], "path": cm_config[1]}]
            for it in items:
                with open(os.path.join(d, it["path"]), "w") as f:
                    f.write(cm_config[0]["data"][it["key"]])
            mapping[m["mountPath"].rstrip("/") + "/"] = d + "/"
    env = {}
    downward = {"spec.nodeName": NODE, "status.podIP": "198.18.0.10"}
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", downward.get(e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath"), "x"))
    args = []
    for a in c["args"]:
        a = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda mm: env.get(mm.group(1), mm.group(0)), a)
        for src, dst in mapping.items():
            a = a.replace(src, dst)
        args.append(a)
    rc, out = run_agent(args)
    assert rc == 1 and "KUBERNETES_SERVICE_HOST" in out, \
        "expected the agent to stop at the missing in-cluster config; args %s:\n%s" % (args, out)


def test_packaged_config_is_accepted_by_the_agent(mtmp):
    path = os.path.join(PACKAGING_DIR, "config.yaml")
    with open(path) as f:
        text = f.read()
    top, commented, nested = config_keys(text)
    known = known_settings()
    assert (top | commented) <= known, "unknown settings: %s" % sorted((top | commented) - known)
    assert nested <= known_limits(), nested
    assert not re.search(r"^cleanupOnExit:\s*true", text, re.M)
    absent = os.path.join(mtmp, "no-manifests-here")
    rc, out = run_agent(["run", "--config", path, "--manifests", absent, "--admin", ""])
    assert rc == 1 and absent in out, out


# ---------------------------------------------------------------------------- node-level install

def _unit_settings(text):
    out = {}
    for ln in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", ln)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def test_systemd_unit_as_installed(mtmp):
    b = harness.agent_bin()
    build_dir = os.path.dirname(os.path.abspath(b))
    assert os.path.exists(os.path.join(build_dir, "cmake_install.cmake")), \
        "%s is not in a CMake build directory; cannot run cmake --install" % b
    prefix = os.path.join(mtmp, "prefix")
    r = subprocess.run(["cmake", "--install", build_dir, "--prefix", prefix],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    unit = os.path.join(prefix, "lib", "systemd", "system", "envsteer.service")
    for p in (os.path.join(prefix, "bin", "envsteer"), unit,
              os.path.join(prefix, "share", "envsteer", "config.yaml")):
        assert os.path.isfile(p), "cmake --install did not install %s" % p
    with open(unit) as f:
        text = f.read()
    s = _unit_settings(text)
    assert s["ExecStart"] == [os.path.join(prefix, "bin", "envsteer") +
                              " run --config /etc/envsteer/config.yaml $ENVSTEER_ARGS"], s["ExecStart"]
    assert s["Restart"] == ["always"]
    assert "network.target" in " ".join(s.get("After", []))
    for k in ("ExecStop", "ExecStopPost"):
        assert not any("uninstall" in v for v in s.get(k, [])), "pins must survive restarts"
    caps = {c for v in s["CapabilityBoundingSet"] for c in v.split()}
    assert {"CAP_" + c for c in REQUIRED_CAPS} <= caps, caps
    assert caps <= {"CAP_" + c for c in REQUIRED_CAPS | OPTIONAL_CAPS}, caps
    assert caps <= {"CAP_" + c for c in linux_capabilities()}, caps
    assert {c for v in s["AmbientCapabilities"] for c in v.split()} == caps

    sa = shutil.which("systemd-analyze")
    assert sa, "systemd-analyze not found (Debian package systemd)"
    r = subprocess.run([sa, "verify", "--man=no", unit], capture_output=True, text=True, timeout=60)
    # verify exits 0 on directives it ignores: any message is a finding.
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def _dockerfile_stages():
    with open(os.path.join(REPO, "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    stages, cur = [], None
    for ln in lines:
        if ln.upper().startswith("FROM "):
            cur = [ln]
            stages.append(cur)
        elif cur is not None:
            cur.append(ln)
    return lines, stages


def _package_of(lib_path):
    cands = [os.path.realpath(lib_path), lib_path]
    cands += [p.replace("/lib/", "/usr/lib/", 1) if p.startswith("/lib/") else p.replace("/usr/lib/", "/lib/", 1)
              for p in list(cands)]
    for p in cands:
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":", 1)[0].strip()
    raise AssertionError("no Debian package owns %s" % lib_path)


def test_dockerfile_runtime_stage_has_every_linked_library():
    lines, stages = _dockerfile_stages()
    assert len(stages) == 2, "a build stage and a runtime stage"
    assert any(re.match(r"ARG DEBIAN_IMAGE=debian:bookworm-slim$", ln) for ln in lines)
    build, runtime = (" ".join(s) for s in stages)
    assert "scripts/install-deps.sh" in build and "-DENVSTEER_BUILD_TESTS=OFF" in build
    assert re.search(r"COPY --from=build \S*/envsteer /usr/local/bin/envsteer", runtime)
    assert 'ENTRYPOINT ["/usr/local/bin/envsteer"]' in runtime
    m = re.search(r"apt-get install (.*?)&&", runtime)
    assert m, "no apt-get install in the runtime stage"
    installed = {w for w in m.group(1).split() if not w.startswith("-")}

    b = harness.agent_bin()
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                        subprocess.run(["readelf", "-d", b], capture_output=True, text=True,
                                       check=True).stdout)
    paths = dict(re.findall(r"^\s*(\S+) => (/\S+)", subprocess.run(
        ["ldd", b], capture_output=True, text=True, check=True).stdout, re.M))
    assert needed and set(needed) <= set(paths), (needed, paths)
    missing = {}
    for lib in needed:
        pkg = _package_of(paths[lib])
        if pkg != "libc6" and pkg not in installed:  # libc6 is the base image's
            missing[lib] = pkg
    assert not missing, "runtime stage lacks the packages of %s" % missing
