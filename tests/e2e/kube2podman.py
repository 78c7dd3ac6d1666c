#!/usr/bin/python3
"""kube2podman: runs a DaemonSet's pod the way a kubelet would, with podman.

Input is what `kubectl apply -k DIR` would apply: the rendered `kubectl kustomize DIR` output
(read here with kubectl, so overlays and `images:` work exactly as for users). The pod
template of the one DaemonSet becomes `podman run` command lines: the init containers (run to
completion, in order), then the containers, with

- the pod's network namespace (hostNetwork: false -> the node's "pod network" namespace, given
  by the caller; true -> the host's), its own PID and IPC namespaces unless hostPID/hostIPC,
  and a private cgroup namespace (what containerd and CRI-O give a pod on cgroup v2 nodes),
- command/args (Kubernetes' $(VAR) expansion included), env (value and the downward API
  fields), the service account's token/CA/namespace at
  /var/run/secrets/kubernetes.io/serviceaccount and KUBERNETES_SERVICE_HOST/PORT,
- volumes: hostPath (through the caller's map of node paths; DirectoryOrCreate / Directory
  checked like the kubelet does), configMap (files from the rendered ConfigMap, read-only),
  emptyDir (tmpfs for medium: Memory, with its sizeLimit), and mountPropagation
  (None -> rprivate, HostToContainer -> rslave, Bidirectional -> rshared),
- securityContext: privileged, allowPrivilegeEscalation, readOnlyRootFilesystem (no extra
  tmpfs: Kubernetes adds none), runAsUser/Group, capabilities (drop/add), seccomp, AppArmor
  and SELinux options,
- resources: limits.memory, limits.cpu, requests.cpu (-> CPU shares, like the kubelet),
- terminationGracePeriodSeconds as the stop timeout, and the probes as data (the caller runs
  them with `podman exec`, like the kubelet runs exec probes).

A field of the pod template this translator does not know is an error, never ignored: when
the manifests change, the translator (and so the test) has to follow. Fields that only a
cluster acts on (scheduling, tolerations, priority, ports on the pod IP, the update strategy)
are listed in NOT_SIMULATED with why.

Command line (prints the podman commands, one per line, shell-quoted):
  kube2podman.py DIR --node-name N --netns PATH --sa-dir D --api-host H --api-port P \\
      --host-path /sys/fs/bpf=/tmp/x/bpf --host-path /sys/fs/cgroup=/tmp/x/cgroup --workdir W
"""
import argparse
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys

import yaml

SA_DIR_IN_CONTAINER = "/var/run/secrets/kubernetes.io/serviceaccount"

# Pod template fields that only a cluster acts on, and why they need nothing here.
NOT_SIMULATED = {
    "nodeSelector": "scheduling: the one node here is linux",
    "tolerations": "scheduling: no taints here",
    "priorityClassName": "scheduling/eviction priority: nothing competes here",
    "serviceAccountName": "which token the kubelet mounts: the caller's --sa-dir is that token",
    "ports": "names the metrics and h2 ports for the NetworkPolicies; no port is published (pod IP only)",
}
KNOWN_POD = {"serviceAccountName", "priorityClassName", "terminationGracePeriodSeconds",
             "hostNetwork", "hostPID", "hostIPC", "nodeSelector", "tolerations",
             "initContainers", "containers", "volumes", "automountServiceAccountToken"}
KNOWN_CONTAINER = {"name", "image", "imagePullPolicy", "command", "args", "env", "ports",
                   "startupProbe", "livenessProbe", "readinessProbe", "resources",
                   "securityContext", "volumeMounts"}
KNOWN_SECURITY = {"privileged", "allowPrivilegeEscalation", "readOnlyRootFilesystem",
                  "runAsUser", "runAsGroup", "capabilities", "seccompProfile",
                  "appArmorProfile", "seLinuxOptions"}
KNOWN_MOUNT = {"name", "mountPath", "readOnly", "mountPropagation"}
PULL = {"IfNotPresent": "missing", "Always": "always", "Never": "never"}
PROPAGATION = {None: "rprivate", "None": "rprivate", "HostToContainer": "rslave",
               "Bidirectional": "rshared"}


class TranslateError(Exception):
    pass


def podman_command():
    """podman as the node's container runtime: with runc, what containerd and CRI-O run pods
    with (crun refuses hybrid cgroup hosts with a controller on cgroup v2, like this project's
    machines)."""
    return ["podman", "--runtime", "runc"]


def runtime_limits():
    """Kubernetes sets no rlimits: a container inherits the runtime's. podman would instead
    raise nofile/nproc for root, which fails where CAP_SYS_RESOURCE is not in the bounding
    set: pass this process's own hard limits (nproc at most podman's default, 32768)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    return ["--ulimit", "nofile=%d:%d" % (nofile, nofile), "--ulimit", "nproc=%d:%d" % (nproc, nproc)]


def render(kustomize_dir, kubectl="kubectl"):
    """The objects `kubectl apply -k kustomize_dir` would apply."""
    env = dict(os.environ, KUBECONFIG=os.devnull)
    r = subprocess.run([kubectl, "kustomize", kustomize_dir], capture_output=True, text=True,
                       env=env, timeout=60)
    if r.returncode != 0:
        raise TranslateError("kubectl kustomize %s: %s" % (kustomize_dir, r.stderr.strip()))
    return [o for o in yaml.safe_load_all(r.stdout) if o]


def _only(obj, known, where):
    extra = set(obj) - set(known)
    if extra:
        raise TranslateError("%s: fields the translator does not know: %s (teach "
                             "tests/e2e/kube2podman.py what they do)" % (where, sorted(extra)))


def quantity_bytes(q):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|M|G)?", str(q))
    if not m:
        raise TranslateError("memory quantity %r" % q)
    mult = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 10**3, "M": 10**6, "G": 10**9}
    return int(m.group(1)) * mult[m.group(2)]


def quantity_millicpu(q):
    s = str(q)
    return int(s[:-1]) if s.endswith("m") else int(float(s) * 1000)


def expand(s, env):
    """Kubernetes' $(VAR) expansion of command and args ($$ is a literal $)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), s)


class Node:
    """What the kubelet of the node would provide: where the node's paths are (host_paths:
    node path -> directory here), the pod network namespace, the service account and the
    downward API's values. workdir receives the ConfigMap files."""

    def __init__(self, name, netns, sa_dir, api_host, api_port, host_paths, workdir,
                 pod_name=None, pod_ip="127.0.0.1", host_ip="127.0.0.1", log_dir=None):
        self.name, self.netns, self.sa_dir = name, netns, sa_dir
        self.api_host, self.api_port = api_host, str(api_port)
        self.host_paths = dict(host_paths)
        self.workdir = workdir
        self.pod_name = pod_name
        self.pod_ip, self.host_ip = pod_ip, host_ip
        self.log_dir = log_dir  # container logs as files, like the kubelet's /var/log/pods

    def host_path(self, path):
        """The directory here that stands for the node's path (longest mapped prefix)."""
        best = None
        for node_path in self.host_paths:
            if path == node_path or path.startswith(node_path.rstrip("/") + "/"):
                if best is None or len(node_path) > len(best):
                    best = node_path
        if best is None:
            raise TranslateError("hostPath %s: not mapped to a directory of this test node" % path)
        return self.host_paths[best] + path[len(best):]


class Container:
    def __init__(self, name, init, argv, probes, stop_timeout):
        self.name, self.init, self.argv = name, init, argv
        self.probes = probes          # {"startupProbe": {...}, ...} as in the manifest
        self.stop_timeout = stop_timeout

    def shell(self):
        return " ".join(shlex.quote(a) for a in self.argv)


def daemonset(objs):
    ds = [o for o in objs if o.get("kind") == "DaemonSet"]
    if len(ds) != 1:
        raise TranslateError("expected one DaemonSet, found %d" % len(ds))
    return ds[0]


def translate(objs, node):
    """[Container] of the DaemonSet's pod on node: init containers first, in order."""
    ds = daemonset(objs)
    ns = ds["metadata"]["namespace"]
    tmpl = ds["spec"]["template"]
    pod = tmpl["spec"]
    _only(pod, KNOWN_POD, "DaemonSet pod spec")
    pod_name = node.pod_name or "%s-%s" % (ds["metadata"]["name"], node.name)
    configmaps = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o
                  for o in objs if o.get("kind") == "ConfigMap"}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    grace = int(pod.get("terminationGracePeriodSeconds", 30))

    common = podman_command() + ["run", "--hostname", pod_name,
              "--label", "io.kubernetes.pod.namespace=" + ns,
              "--label", "io.kubernetes.pod.name=" + pod_name,
              "--network", "host" if pod.get("hostNetwork") else "ns:" + node.netns,
              "--pid", "host" if pod.get("hostPID") else "private",
              "--ipc", "host" if pod.get("hostIPC") else "private",
              "--cgroupns", "private", "--stop-timeout", str(grace)] + runtime_limits()
    downward = {"spec.nodeName": node.name, "metadata.name": pod_name, "metadata.namespace": ns,
                "spec.serviceAccountName": pod.get("serviceAccountName", "default"),
                "status.podIP": node.pod_ip, "status.hostIP": node.host_ip}
    automount = pod.get("automountServiceAccountToken", True)
    out = []
    for init, c in [(True, c) for c in pod.get("initContainers", [])] + \
                   [(False, c) for c in pod["containers"]]:
        where = "container %s" % c["name"]
        _only(c, KNOWN_CONTAINER, where)
        argv = list(common) + ["--name", "%s-%s" % (pod_name, c["name"])]
        argv += ["--pull", PULL[c.get("imagePullPolicy", "IfNotPresent")]]
        argv += ["--rm"] if init else ["--detach"]
        if node.log_dir:
            argv += ["--log-driver", "k8s-file", "--log-opt",
                     "path=%s" % os.path.join(node.log_dir, "%s-%s.log" % (pod_name, c["name"]))]
        env = {}
        if automount:
            env.update(KUBERNETES_SERVICE_HOST=node.api_host, KUBERNETES_SERVICE_PORT=node.api_port,
                       KUBERNETES_SERVICE_PORT_HTTPS=node.api_port)
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(str(e["value"]), env)
            elif "fieldRef" in e.get("valueFrom", {}):
                env[e["name"]] = downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                raise TranslateError("%s: env %s: only value and fieldRef are translated" % (where, e["name"]))
        for k, v in env.items():
            argv += ["--env", "%s=%s" % (k, v)]
        argv += _security(c.get("securityContext", {}), where)
        argv += _resources(c.get("resources", {}))
        if automount:
            argv += ["--mount", "type=bind,source=%s,destination=%s,ro=true" % (node.sa_dir, SA_DIR_IN_CONTAINER)]
        for m in c.get("volumeMounts", []):
            argv += _mount(m, volumes[m["name"]], node, configmaps, ns, where)
        if "command" in c:
            argv += ["--entrypoint", json.dumps([expand(a, env) for a in c["command"]])]
        argv.append(c["image"])
        argv += [expand(a, env) for a in c.get("args", [])]
        probes = {k: c[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in c}
        out.append(Container(c["name"], init, argv, probes, grace))
    return out


def _security(sc, where):
    _only(sc, KNOWN_SECURITY, where + " securityContext")
    a = []
    if sc.get("privileged"):
        a.append("--privileged")
    if sc.get("allowPrivilegeEscalation") is False:
        a += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        a += ["--read-only", "--read-only-tmpfs=false"]
    if "runAsUser" in sc:
        a += ["--user", "%d:%d" % (sc["runAsUser"], sc.get("runAsGroup", 0))]
    caps = sc.get("capabilities", {})
    for cap in caps.get("drop", []):
        a += ["--cap-drop", "all" if cap == "ALL" else "CAP_" + cap]
    for cap in caps.get("add", []):
        a += ["--cap-add", "CAP_" + cap]
    sp = sc.get("seccompProfile", {}).get("type")
    if sp == "Unconfined":
        a += ["--security-opt", "seccomp=unconfined"]
    elif sp not in (None, "RuntimeDefault"):
        raise TranslateError("%s: seccompProfile %s" % (where, sp))
    ap = sc.get("appArmorProfile", {}).get("type")
    if ap == "Unconfined":
        a += ["--security-opt", "apparmor=unconfined"]
    elif ap not in (None, "RuntimeDefault"):
        raise TranslateError("%s: appArmorProfile %s" % (where, ap))
    se = sc.get("seLinuxOptions", {})
    for k in ("type", "level", "user", "role"):
        if k in se:
            a += ["--security-opt", "label=%s:%s" % (k, se[k])]
    return a


def _resources(r):
    a = []
    lim, req = r.get("limits", {}), r.get("requests", {})
    if "memory" in lim:
        a += ["--memory", str(quantity_bytes(lim["memory"]))]
    if "cpu" in lim:
        a += ["--cpus", "%g" % (quantity_millicpu(lim["cpu"]) / 1000)]
    if "cpu" in req:  # the kubelet's milliCPU -> shares
        a += ["--cpu-shares", str(max(2, quantity_millicpu(req["cpu"]) * 1024 // 1000))]
    return a


def _mount(m, vol, node, configmaps, ns, where):
    _only(m, KNOWN_MOUNT, where + " volumeMount " + m["name"])
    dest, ro = m["mountPath"], bool(m.get("readOnly"))
    prop = PROPAGATION[m.get("mountPropagation")]
    if "hostPath" in vol:
        src = node.host_path(vol["hostPath"]["path"])
        t = vol["hostPath"].get("type", "")
        if t == "DirectoryOrCreate":
            os.makedirs(src, mode=0o755, exist_ok=True)
        elif t == "Directory" and not os.path.isdir(src):
            raise TranslateError("hostPath %s (%s): type Directory, and it is not one"
                                 % (vol["hostPath"]["path"], src))
        elif t not in ("", "Directory", "DirectoryOrCreate"):
            raise TranslateError("hostPath type %s" % t)
        return ["--mount", "type=bind,source=%s,destination=%s,ro=%s,bind-propagation=%s"
                % (src, dest, str(ro).lower(), prop)]
    if "configMap" in vol:
        cm = configmaps[(ns, vol["configMap"]["name"])]
        d = os.path.join(node.workdir, "configmap-" + vol["name"])
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        items = vol["configMap"].get("items") or [{"key": k, "path": k} for k in cm.get("data", {})]
        for it in items:
            p = os.path.join(d, it["path"])
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w") as f:
                f.write(cm["data"][it["key"]])
        # the kubelet mounts configMap volumes read-only whatever readOnly says
        return ["--mount", "type=bind,source=%s,destination=%s,ro=true" % (d, dest)]
    if "emptyDir" in vol:
        ed = vol["emptyDir"] or {}
        if ed.get("medium") == "Memory":
            # the kubelet makes emptyDirs 0777
            opt = "type=tmpfs,destination=%s,tmpfs-mode=0777" % dest
            if "sizeLimit" in ed:
                opt += ",tmpfs-size=%d" % quantity_bytes(ed["sizeLimit"])
            return ["--mount", opt]
        d = os.path.join(node.workdir, "emptydir-" + m["name"])
        os.makedirs(d, exist_ok=True)
        return ["--mount", "type=bind,source=%s,destination=%s,ro=%s" % (d, dest, str(ro).lower())]
    raise TranslateError("%s: volume %s: only hostPath, configMap and emptyDir are translated"
                         % (where, m["name"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="kustomization directory (e.g. daemonset/)")
    ap.add_argument("--node-name", required=True)
    ap.add_argument("--netns", required=True, help="the pod network namespace (path)")
    ap.add_argument("--sa-dir", required=True, help="service account dir (token, ca.crt, namespace)")
    ap.add_argument("--api-host", required=True)
    ap.add_argument("--api-port", required=True)
    ap.add_argument("--host-path", action="append", default=[], metavar="NODE_PATH=DIR")
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args(argv)
    node = Node(a.node_name, a.netns, a.sa_dir, a.api_host, a.api_port,
                dict(h.split("=", 1) for h in a.host_path), a.workdir)
    try:
        for c in translate(render(a.dir), node):
            print(c.shell())
    except TranslateError as e:
        sys.exit("kube2podman: %s" % e)


if __name__ == "__main__":
    main()
