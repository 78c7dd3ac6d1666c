"""fakeapi: a loopback Kubernetes API server for tests.

Speaks the real wire protocol of kube-apiserver for the read paths a controller uses:
LIST (resourceVersion semantics, limit/continue pagination over a consistent snapshot,
label and field selectors), WATCH (HTTP/1.1 chunked, one JSON event per line, replay from a
resourceVersion, BOOKMARK, ERROR 410 "Expired", timeoutSeconds), GET of one object,
discovery (/api, /apis, /version), bearer-token and client-certificate authentication over
TLS, and Status objects for every error. Objects are shaped like the real API's.

Fault injection: break_streams, slow, stall_streams, down/up, garbage, fail, compact,
expire_continue_tokens, forbid, rotate_token, set_crd_installed.

Only 127.0.0.1 / ::1 is ever bound. Every stream and wait is bounded in time.
Standard library only (plus the `openssl` CLI to make certificates). See fakeapi_README.md.
"""
import base64
import copy
import gzip
import hmac
import http.server
import json
import os
import re
import secrets
import select
import shutil
import socket
import socketserver
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import traceback
import uuid
from collections import deque
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "FakeAPI", "Resource", "RESOURCES", "LabelSelector", "FieldSelector", "SelectorError",
    "make_service", "make_pod", "make_endpointslice", "make_virtualenv", "make_namespace",
    "status_object",
    "encode_continue", "decode_continue",
]

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"
SA_USER = "system:serviceaccount:envsteer:envsteer"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


# --------------------------------------------------------------------------- resources

class Resource:
    """One served resource: plural/singular/kind, API group and version, selectable fields."""

    def __init__(self, plural, singular, kind, group, version, builtin, fields, short=(),
                 categories=(), namespaced=True):
        self.plural = plural
        self.singular = singular
        self.kind = kind
        self.group = group
        self.version = version
        self.builtin = builtin          # built-in type (typed Go structs) vs custom resource
        self.fields = tuple(fields)     # field selectors the real server supports
        self.short = tuple(short)
        self.categories = tuple(categories)
        self.namespaced = namespaced   # False: cluster-scoped (Namespace), keyed by name

    @property
    def api_version(self):
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    @property
    def list_kind(self):
        return self.kind + "List"

    @property
    def qualified(self):
        return "%s.%s" % (self.plural, self.group) if self.group else self.plural

    def __repr__(self):
        return "Resource(%s)" % self.qualified


_META_FIELDS = ("metadata.name", "metadata.namespace")
RESOURCES = (
    Resource("services", "service", "Service", "", "v1", True,
             _META_FIELDS + ("spec.clusterIP", "spec.type"), ("svc",), ("all",)),
    Resource("pods", "pod", "Pod", "", "v1", True,
             _META_FIELDS + ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                             "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
                             "status.podIP", "status.nominatedNodeName"), ("po",), ("all",)),
    Resource("endpointslices", "endpointslice", "EndpointSlice", "discovery.k8s.io", "v1", True,
             _META_FIELDS),
    Resource("virtualenvironments", "virtualenvironment", "VirtualEnvironment",
             "env.alibaba.com", "v1alpha2", False, _META_FIELDS),
    Resource("namespaces", "namespace", "Namespace", "", "v1", True,
             ("metadata.name", "status.phase"), ("ns",), namespaced=False),
)


# --------------------------------------------------------------------------- small helpers

def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _dumps(obj):
    """JSON like the apiserver writes it: compact, HTML-safe escapes (Go's encoder), newline."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    s = (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
         .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return (s + "\n").encode("utf-8")


def _parse_bool(v):
    """strconv.ParseBool, as the apiserver's query parameter conversion uses."""
    if v is None or v == "":
        return False
    if v in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if v in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError("invalid boolean %r" % v)


def _ip_family(ip):
    return "IPv6" if ":" in ip else "IPv4"


def status_object(code, reason, message, details=None):
    """A metav1.Status failure object, field order as the apiserver writes it."""
    st = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
          "message": message, "reason": reason}
    if details is not None:
        st["details"] = details
    st["code"] = code
    return st


def _fields_v1(value):
    """A plausible managedFields fieldsV1 tree for a value (f: keys, k:{...} list keys)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            sub = _fields_v1(v)
            out["f:" + k] = sub
        if out:
            out = {".": {}, **out} if value else out
        return out
    if isinstance(value, list) and value and all(isinstance(i, dict) for i in value):
        out = {}
        for item in value:
            if "port" in item and "protocol" in item:
                k = "k:" + json.dumps({"port": item["port"], "protocol": item["protocol"]},
                                      separators=(",", ":"))
            elif "type" in item:
                k = "k:" + json.dumps({"type": item["type"]}, separators=(",", ":"))
            elif "name" in item:
                k = "k:" + json.dumps({"name": item["name"]}, separators=(",", ":"))
            else:
                continue
            out[k] = _fields_v1(item)
        return out
    return {}


def _managed_fields(obj, manager):
    tree = {}
    meta = obj.get("metadata", {})
    fm = {}
    for k in ("labels", "annotations", "ownerReferences", "generateName"):
        if meta.get(k):
            fm["f:" + k] = _fields_v1(meta[k])
    if fm:
        tree["f:metadata"] = fm
    for k, v in obj.items():
        if k in ("kind", "apiVersion", "metadata", "status"):
            continue
        tree["f:" + k] = _fields_v1(v)
    return [{"manager": manager, "operation": "Update", "apiVersion": obj.get("apiVersion", "v1"),
             "time": _now(), "fieldsType": "FieldsV1", "fieldsV1": tree}]


# --------------------------------------------------------------------------- object constructors

def _metadata(ns, name, labels=None, annotations=None, uid=None, generate_name=None,
              owner_refs=None):
    """ObjectMeta in the field order the apiserver serialises it."""
    md = {"name": name}
    if generate_name:
        md["generateName"] = generate_name
    md["namespace"] = ns
    md["uid"] = uid or str(uuid.uuid4())
    md["resourceVersion"] = ""          # set by the server on create
    md["creationTimestamp"] = _now()
    if labels:
        md["labels"] = dict(labels)
    if annotations:
        md["annotations"] = dict(annotations)
    if owner_refs:
        md["ownerReferences"] = owner_refs
    return md


def _svc_port(p, many):
    if isinstance(p, dict):
        d = dict(p)
        d.setdefault("protocol", "TCP")
        d.setdefault("targetPort", d["port"])
        return d
    if isinstance(p, int):
        name, port, target, proto = None, p, p, "TCP"
    else:
        p = tuple(p)
        if isinstance(p[0], str) and not p[0].isdigit():
            name, port = p[0], p[1]
            target = p[2] if len(p) > 2 else port
            proto = p[3] if len(p) > 3 else "TCP"
        else:
            name, port = None, p[0]
            target = p[1] if len(p) > 1 else port
            proto = p[2] if len(p) > 2 else "TCP"
    if name is None and many:
        name = "%s-%d" % (proto.lower(), port)   # the API requires names on multi-port services
    d = {}
    if name:
        d["name"] = name
    d["port"] = int(port)
    d["protocol"] = proto
    d["targetPort"] = target
    return d


def make_service(ns, name, cluster_ip, ports, selector=None, labels=None, annotations=None,
                 type="ClusterIP", uid=None):
    """A v1 Service as the apiserver returns it.

    cluster_ip: "10.96.0.10", "None" (headless) or a list for dual stack.
    ports: ints, (port, targetPort[, protocol]), (name, port[, targetPort[, protocol]]) or dicts.
    """
    ips = list(cluster_ip) if isinstance(cluster_ip, (list, tuple)) else [cluster_ip]
    if ips == ["None"]:
        families = ["IPv4"]
    else:
        families = [_ip_family(ip) for ip in ips]
    ports = list(ports or [])
    spec = {}
    spec["ports"] = [_svc_port(p, len(ports) > 1) for p in ports]
    if selector:
        spec["selector"] = dict(selector)
    spec["clusterIP"] = ips[0]
    spec["clusterIPs"] = ips
    spec["type"] = type
    spec["sessionAffinity"] = "None"
    spec["ipFamilies"] = families
    spec["ipFamilyPolicy"] = "RequireDualStack" if len(ips) > 1 else "SingleStack"
    spec["internalTrafficPolicy"] = "Cluster"
    if not spec["ports"]:
        del spec["ports"]
    return {"kind": "Service", "apiVersion": "v1",
            "metadata": _metadata(ns, name, labels, annotations, uid),
            "spec": spec, "status": {"loadBalancer": {}}}


def make_pod(ns, name, ip, labels, node, ready=True, annotations=None, uid=None,
             phase=None, containers=None, host_ip="10.0.0.10", qos="BestEffort",
             runtime="containerd", owner=None):
    """A v1 Pod as the apiserver returns it (scheduled to `node`, running, kubelet-reported).

    ip=None gives a pod without an IP yet (Pending, container creating).
    containers: list of names or (name, containerID) pairs; IDs default to random 64-hex.
    qos: BestEffort | Burstable | Guaranteed (resources are set to match).
    owner: optional (kind, name, uid) controller reference, e.g. ("ReplicaSet", "web-5d8", uid).
    """
    t = _now()
    if containers is None:
        containers = ["app"]
    cs = []
    for c in containers:
        if isinstance(c, str):
            cname, cid = c, None
        else:
            cname, cid = c[0], c[1]
        if cid is None:
            cid = "%s://%s" % (runtime, secrets.token_hex(32))
        elif "://" not in cid:
            cid = "%s://%s" % (runtime, cid)
        cs.append((cname, cid))
    if qos == "Guaranteed":
        resources = {"limits": {"cpu": "100m", "memory": "64Mi"},
                     "requests": {"cpu": "100m", "memory": "64Mi"}}
    elif qos == "Burstable":
        resources = {"requests": {"cpu": "50m", "memory": "32Mi"}}
    else:
        resources = {}
    owner_refs = None
    if owner:
        owner_refs = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                       "uid": owner[2] if len(owner) > 2 else str(uuid.uuid4()),
                       "controller": True, "blockOwnerDeletion": True}]
    md = _metadata(ns, name, labels, annotations, uid, owner_refs=owner_refs)
    spec = {
        "volumes": [{"name": "kube-api-access", "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}],
            "defaultMode": 420}}],
        "containers": [{"name": cname, "image": "registry.example/%s:1" % cname,
                        "resources": resources,
                        "volumeMounts": [{"name": "kube-api-access", "readOnly": True,
                                          "mountPath": SA_DIR}],
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "imagePullPolicy": "IfNotPresent"} for cname, _ in cs],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "nodeName": node,
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300}],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    if node is None:
        del spec["nodeName"]
    running = ip is not None and node is not None
    if phase is None:
        phase = "Running" if running else "Pending"
    rd = "True" if (ready and running) else "False"
    conds = []
    if node is not None:
        conds = [
            {"type": "PodReadyToStartContainers", "status": "True" if running else "False",
             "lastProbeTime": None, "lastTransitionTime": t},
            {"type": "Initialized", "status": "True", "lastProbeTime": None,
             "lastTransitionTime": t},
            {"type": "Ready", "status": rd, "lastProbeTime": None, "lastTransitionTime": t},
            {"type": "ContainersReady", "status": rd, "lastProbeTime": None,
             "lastTransitionTime": t},
            {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
             "lastTransitionTime": t},
        ]
        for c in conds:
            if c["status"] == "False" and c["type"] in ("Ready", "ContainersReady"):
                c["reason"] = "ContainersNotReady"
                c["message"] = "containers with unready status: [%s]" % " ".join(
                    n for n, _ in cs)
    else:
        conds = [{"type": "PodScheduled", "status": "False", "lastProbeTime": None,
                  "lastTransitionTime": t, "reason": "Unschedulable",
                  "message": "0/1 nodes are available"}]
    status = {"phase": phase, "conditions": conds}
    if node is not None:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    if ip is not None:
        ips = list(ip) if isinstance(ip, (list, tuple)) else [ip]
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": i} for i in ips]
    if node is not None:
        status["startTime"] = t
        statuses = []
        for cname, cid in cs:
            st = {"name": cname}
            if running:
                st["state"] = {"running": {"startedAt": t}}
            else:
                st["state"] = {"waiting": {"reason": "ContainerCreating"}}
            st["lastState"] = {}
            st["ready"] = bool(ready and running)
            st["restartCount"] = 0
            st["image"] = "registry.example/%s:1" % cname
            st["imageID"] = "registry.example/%s@sha256:%s" % (cname, "0" * 64)
            if running:
                st["containerID"] = cid
            st["started"] = running
            statuses.append(st)
        status["containerStatuses"] = statuses
    status["qosClass"] = qos
    return {"kind": "Pod", "apiVersion": "v1", "metadata": md, "spec": spec, "status": status}


def make_endpointslice(ns, name, service, endpoints, ports, address_type=None,
                       service_uid=None, labels=None, uid=None):
    """A discovery.k8s.io/v1 EndpointSlice as the endpointslice controller writes it.

    endpoints: (ip, ready, pod_name[, node_name[, pod_uid]]) tuples or dicts with keys
      ip|addresses, ready, serving, terminating, pod, pod_uid, node, zone, hostname.
      An empty list serialises as "endpoints": null, like the real API.
    ports: ints, (name, port[, protocol]) or dicts; unnamed ports get name "" like the API.
    """
    eps = []
    first_ip = None
    for e in endpoints or []:
        if isinstance(e, dict):
            addrs = e.get("addresses") or [e["ip"]]
            ready = e.get("ready", True)
            serving = e.get("serving", ready)
            terminating = e.get("terminating", False)
            pod, node, puid = e.get("pod"), e.get("node"), e.get("pod_uid")
            zone, hostname = e.get("zone"), e.get("hostname")
        else:
            e = tuple(e)
            addrs = [e[0]]
            ready = e[1] if len(e) > 1 else True
            serving, terminating = ready, False
            pod = e[2] if len(e) > 2 else None
            node = e[3] if len(e) > 3 else None
            puid = e[4] if len(e) > 4 else None
            zone = hostname = None
        first_ip = first_ip or addrs[0]
        ep = {"addresses": list(addrs),
              "conditions": {"ready": bool(ready), "serving": bool(serving),
                             "terminating": bool(terminating)}}
        if hostname:
            ep["hostname"] = hostname
        if pod:
            ep["targetRef"] = {"kind": "Pod", "namespace": ns, "name": pod,
                               "uid": puid or str(uuid.uuid4())}
        if node:
            ep["nodeName"] = node
        if zone:
            ep["zone"] = zone
        eps.append(ep)
    pl = []
    for p in ports or []:
        if isinstance(p, dict):
            d = {"name": p.get("name", ""), "protocol": p.get("protocol", "TCP"),
                 "port": p["port"]}
        elif isinstance(p, int):
            d = {"name": "", "protocol": "TCP", "port": p}
        else:
            d = {"name": p[0] or "", "protocol": p[2] if len(p) > 2 else "TCP",
                 "port": int(p[1])}
        pl.append(d)
    lbl = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
           "kubernetes.io/service-name": service}
    if labels:
        lbl.update(labels)
    owner = [{"apiVersion": "v1", "kind": "Service", "name": service,
              "uid": service_uid or str(uuid.uuid4()), "controller": True,
              "blockOwnerDeletion": True}]
    md = _metadata(ns, name, lbl, {"endpoints.kubernetes.io/last-change-trigger-time": _now()},
                   uid, generate_name=service + "-", owner_refs=owner)
    if address_type is None:
        address_type = _ip_family(first_ip) if first_ip else "IPv4"
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": md,
            "addressType": address_type, "endpoints": eps or None, "ports": pl}


def make_namespace(name, labels=None, annotations=None, uid=None):
    """A v1 Namespace (cluster-scoped) as the apiserver stores it."""
    md = {"name": name, "uid": uid or str(uuid.uuid4()), "resourceVersion": "",
          "creationTimestamp": _now()}
    lb = {"kubernetes.io/metadata.name": name}
    lb.update(labels or {})
    md["labels"] = lb
    if annotations:
        md["annotations"] = dict(annotations)
    return {"kind": "Namespace", "apiVersion": "v1", "metadata": md,
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def make_virtualenv(ns, name, header="X-Virtual-Env", auto_inject=None, label="virtual-env",
                    splitter=".", default_subset=None, aliases=None, uid=None):
    """An env.alibaba.com/v1alpha2 VirtualEnvironment (a custom resource; keys a client may
    not get are simply left out when None). aliases: [{"name", "pattern"[, "placeholder"]}]."""
    env_header = {}
    if header is not None:
        env_header["name"] = header
    if auto_inject is not None:
        env_header["autoInject"] = bool(auto_inject)
    if aliases:
        env_header["aliases"] = [dict(a) for a in aliases]
    env_label = {}
    if label is not None:
        env_label["name"] = label
    if splitter is not None:
        env_label["splitter"] = splitter
    if default_subset is not None:
        env_label["defaultSubset"] = default_subset
    spec = {}
    if env_header:
        spec["envHeader"] = env_header
    if env_label:
        spec["envLabel"] = env_label
    md = _metadata(ns, name, uid=uid)
    md["generation"] = 1
    return {"apiVersion": "env.alibaba.com/v1alpha2", "kind": "VirtualEnvironment",
            "metadata": md, "spec": spec}


# --------------------------------------------------------------------------- selectors

class SelectorError(ValueError):
    pass


_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUB_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_SPECIAL = "!=(),<>"


def _check_label_key(k):
    name = k
    if "/" in k:
        prefix, name = k.split("/", 1)
        if not prefix or len(prefix) > 253 or not _DNS_SUB_RE.match(prefix):
            raise SelectorError("unable to parse requirement: key: Invalid value: %s: prefix "
                                "part must be a lowercase RFC 1123 subdomain" % json.dumps(k))
    if not name or len(name) > 63 or not _NAME_RE.match(name):
        raise SelectorError("unable to parse requirement: key: Invalid value: %s: name part must "
                            "consist of alphanumeric characters, '-', '_' or '.', and must start "
                            "and end with an alphanumeric character" % json.dumps(k))


def _check_label_value(k, v):
    if v and (len(v) > 63 or not _NAME_RE.match(v)):
        raise SelectorError("unable to parse requirement: values[0][%s]: Invalid value: %s: a "
                            "valid label must be an empty string or consist of alphanumeric "
                            "characters, '-', '_' or '.', and must start and end with an "
                            "alphanumeric character" % (k, json.dumps(v)))


def _lex_labels(s):
    toks, i, n = [], 0, len(s)
    while i < n:
        c = s[i]
        if c.isspace():
            i += 1
            continue
        if s[i:i + 2] in ("==", "!="):
            toks.append(s[i:i + 2])
            i += 2
            continue
        if c in _LABEL_SPECIAL:
            toks.append(c)
            i += 1
            continue
        j = i
        while j < n and not s[j].isspace() and s[j] not in _LABEL_SPECIAL:
            j += 1
        toks.append(("id", s[i:j]))
        i = j
    return toks


def _is_id(t):
    return isinstance(t, tuple)


def _tokstr(t):
    return t[1] if _is_id(t) else ("EOS" if t is None else t)


class LabelSelector:
    """labels.Parse: a=b, a==b, a!=b, a, !a, a in (x,y), a notin (x), a>1, a<1; comma = AND."""

    def __init__(self, text=""):
        self.text = text or ""
        self.reqs = self._parse(self.text)

    @property
    def empty(self):
        return not self.reqs

    @staticmethod
    def _parse(s):
        toks = _lex_labels(s)
        reqs = []
        pos = 0

        def peek():
            return toks[pos] if pos < len(toks) else None

        if not toks:
            return reqs
        while True:
            t = peek()
            pos += 1
            if t == "!":
                k = peek()
                pos += 1
                if not _is_id(k):
                    raise SelectorError("found '%s', expected: identifier" % _tokstr(k))
                _check_label_key(k[1])
                reqs.append((k[1], "!", ()))
            elif _is_id(t):
                key = t[1]
                _check_label_key(key)
                op = peek()
                if op is None or op == ",":
                    reqs.append((key, "exists", ()))
                elif op in ("=", "==", "!="):
                    pos += 1
                    v = peek()
                    if _is_id(v):
                        pos += 1
                        val = v[1]
                    elif v is None or v == ",":
                        val = ""
                    else:
                        raise SelectorError("found '%s', expected: identifier" % _tokstr(v))
                    _check_label_value(key, val)
                    reqs.append((key, "!=" if op == "!=" else "=", (val,)))
                elif _is_id(op) and op[1] in ("in", "notin"):
                    pos += 1
                    if peek() != "(":
                        raise SelectorError("found '%s', expected: '('" % _tokstr(peek()))
                    pos += 1
                    vals, cur = [], None
                    while True:
                        v = peek()
                        pos += 1
                        if v is None:
                            raise SelectorError("found 'EOS', expected: ')'")
                        if v == ")":
                            vals.append(cur or "")
                            break
                        if v == ",":
                            vals.append(cur or "")
                            cur = None
                        elif _is_id(v) and cur is None:
                            cur = v[1]
                        else:
                            raise SelectorError("found '%s', expected: ',' or ')'" % _tokstr(v))
                    for v in vals:
                        _check_label_value(key, v)
                    reqs.append((key, op[1], tuple(vals)))
                elif op in ("<", ">"):
                    pos += 1
                    v = peek()
                    pos += 1
                    if not _is_id(v):
                        raise SelectorError("found '%s', expected: identifier" % _tokstr(v))
                    try:
                        int(v[1])
                    except ValueError:
                        raise SelectorError("unable to parse requirement: for 'Gt', 'Lt' "
                                            "operators, the value must be an integer")
                    reqs.append((key, op, (v[1],)))
                else:
                    raise SelectorError("found '%s', expected: =, !=, ==, in, notin"
                                        % _tokstr(op))
            else:
                raise SelectorError("found '%s', expected: !, identifier, or 'end of string'"
                                    % _tokstr(t))
            t = peek()
            if t is None:
                break
            if t != ",":
                raise SelectorError("found '%s', expected: ',' or 'end of string'" % _tokstr(t))
            pos += 1
            if peek() is None:
                raise SelectorError("found 'EOS', expected: identifier after ','")
        return reqs

    def matches(self, labels):
        labels = labels or {}
        for key, op, vals in self.reqs:
            has = key in labels
            v = labels.get(key)
            if op == "exists":
                ok = has
            elif op == "!":
                ok = not has
            elif op in ("=", "in"):
                ok = has and v in vals
            elif op in ("!=", "notin"):
                ok = (not has) or v not in vals
            else:
                try:
                    n = int(v) if has else None
                except ValueError:
                    n = None
                ok = n is not None and (n > int(vals[0]) if op == ">" else n < int(vals[0]))
            if not ok:
                return False
        return True


def _split_unescaped(s, sep):
    parts, cur, i = [], [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape_field(v):
    out, i = [], 0
    while i < len(v):
        c = v[i]
        if c == "\\":
            if i + 1 >= len(v) or v[i + 1] not in "\\,=":
                raise SelectorError("invalid field selector: invalid escape sequence in %r" % v)
            out.append(v[i + 1])
            i += 2
            continue
        if c in ",=":
            raise SelectorError("invalid field selector: unescaped %r in %r" % (c, v))
        out.append(c)
        i += 1
    return "".join(out)


def _field_value(obj, path):
    cur = obj
    for p in path.split("."):
        cur = cur.get(p) if isinstance(cur, dict) else None
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


class FieldSelector:
    """fields.ParseSelector: k=v, k==v, k!=v, comma = AND, backslash escapes; only the fields
    the real server supports for the resource (else 'field label not supported')."""

    def __init__(self, text="", resource=None):
        self.text = text or ""
        self.reqs = []
        for term in _split_unescaped(self.text, ","):
            if term == "":
                continue
            i, op = 0, None
            while i < len(term):
                if term[i] == "\\":
                    i += 2
                    continue
                for cand in ("!=", "==", "="):
                    if term.startswith(cand, i):
                        op = cand
                        break
                if op:
                    break
                i += 1
            if not op:
                raise SelectorError("invalid selector: '%s'; can't understand '%s'"
                                    % (self.text, term))
            key, val = term[:i], _unescape_field(term[i + len(op):])
            if resource is not None and key not in resource.fields:
                raise SelectorError("field label not supported: %s" % key)
            self.reqs.append((key, "!=" if op == "!=" else "=", val))

    @property
    def empty(self):
        return not self.reqs

    def matches(self, obj):
        for key, op, val in self.reqs:
            have = _field_value(obj, key)
            if (have == val) != (op == "="):
                return False
        return True


# --------------------------------------------------------------------------- continue tokens

def encode_continue(rv, start):
    """Like the apiserver's etcd3 store: base64url (no padding) of {"v","rv","start"}."""
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start},
                     separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_continue(tok):
    try:
        raw = base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4))
        d = json.loads(raw)
    except (ValueError, TypeError) as e:
        raise ValueError("continue key is not valid: %s" % e)
    if not isinstance(d, dict) or d.get("v") != "meta.k8s.io/v1":
        raise ValueError("continue key is not valid: server does not recognize this encoding")
    rv, start = d.get("rv"), d.get("start")
    if not isinstance(rv, int) or rv <= 0 or not isinstance(start, str) or not start:
        raise ValueError("continue key is not valid: incorrect encoded start resourceVersion "
                         "(version meta.k8s.io/v1)")
    if start.startswith("/") or ".." in start:
        raise ValueError("continue key is not valid: path traversal")
    return rv, start


# --------------------------------------------------------------------------- request log

class Request:
    """One request the server received (kept in FakeAPI.requests)."""

    __slots__ = ("method", "path", "query", "auth_ok", "user", "status", "watch", "resource",
                 "namespace", "time", "headers", "verb")

    def __init__(self, method, path, query, headers):
        self.method = method
        self.path = path
        self.query = query           # dict: parameter -> last value
        self.headers = headers       # dict: lower-case header -> value
        self.auth_ok = False
        self.user = None
        self.status = None
        self.watch = False
        self.resource = None         # plural, when a resource path
        self.namespace = None
        self.verb = None             # "list" | "watch" | "get" | "create"... for resource paths
        self.time = time.time()

    @property
    def kind(self):
        """Same as verb: 'watch', 'list', 'get' for resource requests, else None."""
        return self.verb

    def __repr__(self):
        q = "&".join("%s=%s" % kv for kv in self.query.items())
        return "<%s %s%s auth=%s -> %s>" % (self.method, self.path, "?" + q if q else "",
                                            self.auth_ok, self.status)


class _Abort(Exception):
    """Abrupt end of a connection (injected fault)."""


# --------------------------------------------------------------------------- HTTP plumbing

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakeapi"

    def handle(self):
        self.close_connection = True
        try:
            self.handle_one_request()
            while not self.close_connection:
                self.handle_one_request()
        except (_Abort, OSError, ssl.SSLError):
            self.close_connection = True

    def finish(self):
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    def send_response(self, code, message=None):
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def log_message(self, fmt, *args):  # quiet
        pass

    def do_GET(self):
        self.server.api._handle(self, "GET")

    def do_HEAD(self):
        self.server.api._handle(self, "HEAD")

    def do_POST(self):
        self.server.api._handle(self, "POST")

    def do_PUT(self):
        self.server.api._handle(self, "PUT")

    def do_PATCH(self):
        self.server.api._handle(self, "PATCH")

    def do_DELETE(self):
        self.server.api._handle(self, "DELETE")


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, addr, api):
        self.api = api
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        super().__init__(addr, _Handler)

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)   # no getfqdn() lookup
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request, client_address):
        api = self.api
        conn = request
        try:
            request.settimeout(api.io_timeout)
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # as Go does
            if api._ssl_ctx is not None:
                conn = api._ssl_ctx.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            try:
                request.close()
            except OSError:
                pass
            return
        api._track(conn)
        try:
            _Handler(conn, client_address, self)
        except Exception:  # noqa: BLE001 - recorded in api.errors, never printed per socket
            with api._lock:
                api.errors.append(traceback.format_exc())
        finally:
            api._untrack(conn)
            try:
                conn.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        pass


def _raw_shutdown(conn, rst=False):
    """Close the TCP connection under a (TLS) socket without a TLS close_notify."""
    try:
        if rst:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        socket.socket.shutdown(conn, socket.SHUT_RDWR)
    except OSError:
        pass


def _atomic_write(path, text):
    tmp = "%s.tmp-%s" % (path, secrets.token_hex(4))
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)


def _peer_gone(conn):
    """True when the client closed its end (EOF or error waiting to be read), like Go's
    net/http background read that cancels a request's context."""
    try:
        r, _, _ = select.select([conn], [], [], 0)
        if not r:
            return False
        return socket.socket.recv(conn, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True


# --------------------------------------------------------------------------- certificates

_OSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = fakeapi
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = @san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[san]
IP.1 = 127.0.0.1
IP.2 = ::1
DNS.1 = localhost
DNS.2 = kubernetes
DNS.3 = kubernetes.default
DNS.4 = kubernetes.default.svc
DNS.5 = kubernetes.default.svc.cluster.local
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _openssl(*args):
    r = subprocess.run(["openssl"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30, text=True)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (args[0], r.stderr.strip()))


def _make_certs(d, key_type="ec"):
    cnf = os.path.join(d, "openssl.cnf")
    with open(cnf, "w") as f:
        f.write(_OSSL_CNF)
    if key_type == "rsa":
        kargs = ["-newkey", "rsa:2048"]
    else:
        kargs = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    p = lambda n: os.path.join(d, n)  # noqa: E731
    _openssl("req", "-x509", "-config", cnf, "-extensions", "v3_ca", *kargs, "-nodes",
             "-keyout", p("ca.key"), "-out", p("ca.crt"), "-days", "2",
             "-subj", "/CN=fakeapi-ca")
    for name, subj in (("server", "/CN=kube-apiserver"),
                       ("client", "/O=envsteer-test/CN=envsteer-client")):
        _openssl("req", "-new", "-config", cnf, *kargs, "-nodes", "-keyout", p(name + ".key"),
                 "-out", p(name + ".csr"), "-subj", subj)
        _openssl("x509", "-req", "-in", p(name + ".csr"), "-CA", p("ca.crt"), "-CAkey",
                 p("ca.key"), "-set_serial", "0x" + secrets.token_hex(8), "-days", "2",
                 "-sha256", "-extfile", cnf, "-extensions", name, "-out", p(name + ".crt"))
    for f in os.listdir(d):
        if f.endswith(".key"):
            os.chmod(p(f), 0o600)


# --------------------------------------------------------------------------- kubeconfig YAML

_YAML_PLAIN = re.compile(r"^[A-Za-z0-9_./+=-][A-Za-z0-9_./:+=@-]*$")
_YAML_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"}


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if (_YAML_PLAIN.match(s) and s.lower() not in _YAML_RESERVED
            and not re.match(r"^[-+]?[0-9.]", s) and not s.endswith(":")):
        return s
    return json.dumps(s)


def _yaml(obj, indent=0):
    """Block-style YAML for dicts/lists/scalars (enough for a kubeconfig)."""
    pad = " " * indent
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                lines.append("%s%s:" % (pad, k))
                lines.append(_yaml(v, indent + 2))
            elif isinstance(v, list) and v:
                lines.append("%s%s:" % (pad, k))
                lines.append(_yaml(v, indent))
            elif isinstance(v, dict):
                lines.append("%s%s: {}" % (pad, k))
            elif isinstance(v, list):
                lines.append("%s%s: []" % (pad, k))
            else:
                lines.append("%s%s: %s" % (pad, k, _yaml_scalar(v)))
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict) and item:
                sub = _yaml(item, indent + 2).split("\n")
                sub[0] = pad + "- " + sub[0][indent + 2:]
                lines.append("\n".join(sub))
            else:
                lines.append("%s- %s" % (pad, _yaml_scalar(item)))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the server

class FakeAPI:
    """A loopback kube-apiserver for tests. See the module and fakeapi_README.md.

    api = FakeAPI(); api.start(); ...; api.stop()   (or `with FakeAPI() as api:`)
    """

    def __init__(self, tls=True, token="secret-token", port=0, host="127.0.0.1",
                 virtualenv_crd=True, anonymous=False, bookmark_interval=5.0,
                 history_limit=1000, watch_max_seconds=120.0, first_rv=1000,
                 managed_fields=True, key_type="ec"):
        if host not in ("127.0.0.1", "::1"):
            raise ValueError("fakeapi listens on 127.0.0.1 or ::1 only")
        self.tls = tls
        self.host = host
        self.port = port
        self.anonymous = anonymous            # no credentials: 403 as system:anonymous (else 401)
        self.bookmark_interval = bookmark_interval
        self.history_limit = history_limit    # events kept per resource (the watch window)
        self.watch_max_seconds = watch_max_seconds  # cap for watches without/with timeoutSeconds
        self.too_large_wait = 3.0             # how long a too-new resourceVersion waits
        self.io_timeout = 30.0                # socket timeout per connection
        self.gzip_threshold = 128 * 1024      # like APIResponseCompression
        self.paginate_rv0 = False             # resourceVersion=0 lists come from "the cache"
        self.managed_fields = managed_fields
        self.key_type = key_type
        self._tokens = {token} if token else set()
        self._latest_token = token
        self.errors = []                      # tracebacks of server-side bugs (should stay [])
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._rv = int(first_rv)
        self._res = {r.plural: r for r in RESOURCES}
        self._objs = {r.plural: {} for r in RESOURCES}
        self._hist = {r.plural: deque() for r in RESOURCES}
        self._floor = {r.plural: self._rv for r in RESOURCES}
        self._continue_floor = 0
        self._crd_installed = bool(virtualenv_crd)
        self._forbidden = set()               # (plural, verb)
        self._events = {}                     # "ns/name" -> core/v1 Event (POSTed; create only)
        self._requests = []
        self._watches = {}
        self._watch_seq = 0
        self._conns = set()
        self._break_gen = 0
        self._break_partial = False
        self._break_rst = False
        self._stalled = False
        self._slow = 0.0
        self._slow_events = 0.0
        self._garbage = 0
        self._fail = []                       # queued (code, reason, message, retry_after)
        self._server = None
        self._thread = None
        self._stopping = threading.Event()
        self._dir = None
        self._ssl_ctx = None
        self._incluster_dirs = []
        self._token_files = []
        self.ca_file = self.client_cert = self.client_key = None
        self.server_cert = self.server_key = None

    # ------------------------------------------------------------------ lifecycle

    def start(self):
        self._dir = tempfile.mkdtemp(prefix="fakeapi-")
        if self.tls:
            _make_certs(self._dir, self.key_type)
            j = lambda n: os.path.join(self._dir, n)  # noqa: E731
            self.ca_file, self.server_cert, self.server_key = j("ca.crt"), j("server.crt"), \
                j("server.key")
            self.client_cert, self.client_key = j("client.crt"), j("client.key")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(self.server_cert, self.server_key)
            ctx.load_verify_locations(self.ca_file)
            ctx.verify_mode = ssl.CERT_OPTIONAL   # client certs accepted when presented
            ctx.set_alpn_protocols(["http/1.1"])  # no HTTP/2: clients fall back to 1.1
            self._ssl_ctx = ctx
        self._listen()
        return self

    def _listen(self):
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="fakeapi-%d" % self.port)
        self._thread.start()

    def stop(self):
        """Stop serving, close every connection, remove the temp dir (certs, kubeconfigs)."""
        self._stopping.set()
        self.down()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with self._lock:
                if not self._conns:
                    break
            time.sleep(0.02)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        h = "[%s]" % self.host if ":" in self.host else self.host
        return "%s://%s:%d" % ("https" if self.tls else "http", h, self.port)

    @property
    def token(self):
        """One currently valid token (the latest set)."""
        return self._current_token

    @property
    def _current_token(self):
        return self._latest_token

    @property
    def workdir(self):
        return self._dir

    # ------------------------------------------------------------------ faults

    def down(self):
        """Refuse connections: close the listening socket and every open connection."""
        srv, self._server = self._server, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self.break_streams()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            _raw_shutdown(c)

    def up(self):
        """Listen again on the same port."""
        if self._server is None:
            self._stopping.clear()
            deadline = time.monotonic() + 5
            while True:
                try:
                    self._listen()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    @property
    def is_up(self):
        return self._server is not None

    def break_streams(self, partial=False, rst=False):
        """Abruptly end every open watch: no terminating chunk, no TLS close_notify.
        partial=True first writes half of an event line; rst=True resets the TCP connection."""
        with self._cond:
            self._break_gen += 1
            self._break_partial = partial
            self._break_rst = rst
            self._cond.notify_all()

    def slow(self, seconds, per_event=0.0):
        """Delay the start of every response by `seconds` (and each watch event by per_event)."""
        self._slow = max(0.0, min(float(seconds), 60.0))
        self._slow_events = max(0.0, min(float(per_event), 10.0))

    def stall_streams(self, stalled=True):
        """Open watches send nothing (no events, no bookmarks) until unstalled."""
        with self._cond:
            self._stalled = stalled
            self._cond.notify_all()

    def garbage(self, n=1):
        """The next n API responses are 200 with a non-JSON body."""
        with self._lock:
            self._garbage += int(n)

    def fail(self, n=1, code=500, reason=None, message=None, retry_after=None):
        """The next n API responses are HTTP `code` with a Status body (429 gets Retry-After)."""
        reasons = {500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests",
                   504: "Timeout", 403: "Forbidden", 401: "Unauthorized", 404: "NotFound",
                   410: "Expired", 400: "BadRequest"}
        reason = reason or reasons.get(code, "InternalError")
        if message is None:
            message = ("Too many requests, please try again later." if code == 429
                       else "an error on the server (\"injected by fakeapi\") has prevented "
                            "the request from succeeding")
        if code == 429 and retry_after is None:
            retry_after = 1
        with self._lock:
            self._fail.extend([(code, reason, message, retry_after)] * int(n))

    def compact(self):
        """Drop all event history (like etcd compaction): watches and continue tokens from any
        older resourceVersion get 410 Expired."""
        with self._cond:
            for r in self._hist:
                self._hist[r].clear()
                self._floor[r] = self._rv
            self._cond.notify_all()

    def expire_continue_tokens(self):
        """Every continue token issued so far gets 410 Expired (watch history is kept)."""
        with self._cond:
            # Advance the store's revision like an unrelated etcd write would, so that lists
            # made from now on get tokens that still work.
            self._rv += 1
            self._continue_floor = self._rv
            self._cond.notify_all()

    def forbid(self, resource, verbs=("get", "list", "watch")):
        """RBAC says no: 403 Forbidden for these verbs on the resource ("events": create)."""
        plural = "events" if resource == "events" else self._resource(resource).plural
        with self._lock:
            for v in verbs:
                self._forbidden.add((plural, v))

    def allow(self, resource, verbs=("get", "list", "watch")):
        plural = "events" if resource == "events" else self._resource(resource).plural
        with self._lock:
            for v in verbs:
                self._forbidden.discard((plural, v))

    def set_crd_installed(self, installed):
        """Install/remove the VirtualEnvironment CRD. Removal deletes every VirtualEnvironment
        (DELETED events), ends their watches cleanly, and the paths then answer 404."""
        if installed:
            with self._cond:
                self._crd_installed = True
            return
        for o in self.objects("virtualenvironments"):
            self.delete("virtualenvironments", o["metadata"]["namespace"], o["metadata"]["name"])
        with self._cond:
            self._crd_installed = False
            self._cond.notify_all()

    def rotate_token(self, new, keep_old=False):
        """Make `new` the valid token; the old one(s) stop working unless keep_old. In-cluster
        directories written by write_incluster() get the new token (kubelet's atomic swap)."""
        with self._lock:
            if not keep_old:
                self._tokens = set()
            self._tokens.add(new)
            self._latest_token = new
            dirs = list(self._incluster_dirs)
            files = list(self._token_files)
        for d in dirs:
            self._write_projected(d, {"token": new})
        for tf in files:
            _atomic_write(tf, new)

    # ------------------------------------------------------------------ object store

    def _resource(self, kind):
        if isinstance(kind, Resource):
            return kind
        k = str(kind).lower()
        for r in self._res.values():
            if k in (r.plural, r.singular, r.kind.lower(), r.qualified) or k in r.short:
                return r
        raise KeyError("unknown resource %r" % kind)

    def _res_of(self, obj):
        r = self._resource(obj["kind"])
        if obj.get("apiVersion") != r.api_version:
            raise ValueError("%s must have apiVersion %s" % (r.kind, r.api_version))
        return r

    @staticmethod
    def _key(obj):
        md = obj["metadata"]
        if "namespace" not in md:  # cluster-scoped
            return md["name"]
        return "%s/%s" % (md["namespace"], md["name"])

    @staticmethod
    def _store_key(r, ns, name):
        return "%s/%s" % (ns, name) if r.namespaced else name

    def _commit(self, r, etype, obj, prev):
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = self._key(obj)
        if etype == DELETED:
            del self._objs[r.plural][key]
        else:
            self._objs[r.plural][key] = obj
        h = self._hist[r.plural]
        h.append((self._rv, etype, obj, prev))
        while len(h) > self.history_limit:
            old = h.popleft()
            self._floor[r.plural] = old[0]
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def create(self, obj):
        """Store a new object (ADDED). Server-set fields (uid, creationTimestamp,
        resourceVersion, generation) are filled like the apiserver does."""
        r = self._res_of(obj)
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        if r.namespaced:
            md.setdefault("namespace", "default")
        else:
            md.pop("namespace", None)
        if not md.get("name"):
            raise ValueError("metadata.name is required")
        if not md.get("uid"):
            md["uid"] = str(uuid.uuid4())
        if not md.get("creationTimestamp"):
            md["creationTimestamp"] = _now()
        if r.plural in ("endpointslices", "virtualenvironments"):
            md["generation"] = 1
        if self.managed_fields and "managedFields" not in md:
            manager = {"pods": "kubelet", "endpointslices": "kube-controller-manager"}.get(
                r.plural, "kubectl-client-side-apply")
            md["managedFields"] = _managed_fields(obj, manager)
        with self._cond:
            if r.plural == "virtualenvironments" and not self._crd_installed:
                raise KeyError("the VirtualEnvironment CRD is not installed")
            if self._key(obj) in self._objs[r.plural]:
                raise KeyError('%s "%s" already exists' % (r.qualified, md["name"]))
            return self._commit(r, ADDED, obj, None)

    @staticmethod
    def _content(o):
        o = copy.deepcopy(o)
        o["metadata"].pop("resourceVersion", None)
        o["metadata"].pop("managedFields", None)
        o["metadata"].pop("generation", None)
        return o

    def update(self, obj):
        """Replace an object (MODIFIED). uid and creationTimestamp are kept from the stored
        object; a no-op update changes nothing and sends no event, like the real server."""
        r = self._res_of(obj)
        obj = copy.deepcopy(obj)
        md = obj["metadata"]
        if r.namespaced:
            md.setdefault("namespace", "default")
        else:
            md.pop("namespace", None)
        with self._cond:
            cur = self._objs[r.plural].get(self._key(obj))
            if cur is None:
                raise KeyError('%s "%s" not found' % (r.qualified, md["name"]))
            cmd = cur["metadata"]
            md["uid"] = cmd["uid"]
            md["creationTimestamp"] = cmd["creationTimestamp"]
            if "managedFields" in cmd and "managedFields" not in md:
                md["managedFields"] = cmd["managedFields"]
            if "generation" in cmd:
                strip = lambda o: {k: v for k, v in o.items()  # noqa: E731
                                   if k not in ("metadata", "status")}
                md["generation"] = cmd["generation"] + (strip(obj) != strip(cur))
            if self._content(obj) == self._content(cur):
                return copy.deepcopy(cur)
            return self._commit(r, MODIFIED, obj, cur)

    def delete(self, kind, ns, name):
        """Remove an object (DELETED event carrying its last state at the delete's RV)."""
        r = self._resource(kind)
        with self._cond:
            cur = self._objs[r.plural].get(self._store_key(r, ns, name))
            if cur is None:
                raise KeyError('%s "%s" not found' % (r.qualified, name))
            return self._commit(r, DELETED, cur, cur)

    def get(self, kind, ns, name):
        r = self._resource(kind)
        with self._lock:
            o = self._objs[r.plural].get(self._store_key(r, ns, name))
            return copy.deepcopy(o) if o is not None else None

    def objects(self, kind, ns=None):
        r = self._resource(kind)
        with self._lock:
            return [copy.deepcopy(o) for k, o in sorted(self._objs[r.plural].items())
                    if ns is None or o["metadata"].get("namespace") == ns]

    def apply(self, obj):
        """create() or update(), whichever applies."""
        r = self._res_of(obj)
        md = obj["metadata"]
        if self.get(r, md.get("namespace", "default"), md["name"]) is None:
            return self.create(obj)
        return self.update(obj)

    def mutate(self, kind, ns, name, fn):
        """update() with fn(obj) applied to a copy of the stored object."""
        o = self.get(kind, ns, name)
        if o is None:
            r = self._resource(kind)
            raise KeyError('%s "%s" not found' % (r.qualified, name))
        res = fn(o)
        return self.update(res if isinstance(res, dict) else o)

    def relabel(self, kind, ns, name, labels=None, remove=()):
        """Set/overwrite labels and remove the keys in `remove` (a MODIFIED)."""
        def fn(o):
            lb = o["metadata"].setdefault("labels", {})
            lb.update(labels or {})
            for k in remove:
                lb.pop(k, None)
            if not lb:
                del o["metadata"]["labels"]
        return self.mutate(kind, ns, name, fn)

    def set_pod_ready(self, ns, name, ready):
        """Flip a pod's Ready/ContainersReady conditions and container readiness."""
        def fn(o):
            st = o["status"]
            for c in st.get("conditions", []):
                if c["type"] in ("Ready", "ContainersReady"):
                    c["status"] = "True" if ready else "False"
                    c["lastTransitionTime"] = _now()
                    if ready:
                        c.pop("reason", None)
                        c.pop("message", None)
                    else:
                        c["reason"] = "ContainersNotReady"
                        c["message"] = "containers with unready status: [%s]" % " ".join(
                            s["name"] for s in st.get("containerStatuses", []))
            for s in st.get("containerStatuses", []):
                s["ready"] = bool(ready)
        return self.mutate("pods", ns, name, fn)

    def set_endpoint_ready(self, ns, slice_name, ip, ready, serving=None, terminating=None):
        """Flip one endpoint's conditions in an EndpointSlice."""
        def fn(o):
            found = False
            for ep in o.get("endpoints") or []:
                if ip in ep["addresses"]:
                    found = True
                    c = ep["conditions"]
                    c["ready"] = bool(ready)
                    c["serving"] = bool(ready if serving is None else serving)
                    if terminating is not None:
                        c["terminating"] = bool(terminating)
            if not found:
                raise KeyError("no endpoint %s in %s/%s" % (ip, ns, slice_name))
        return self.mutate("endpointslices", ns, slice_name, fn)

    def begin_delete(self, kind, ns, name, grace_seconds=30):
        """Graceful deletion's first step: set deletionTimestamp (a MODIFIED); delete() later."""
        def fn(o):
            o["metadata"]["deletionTimestamp"] = time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + grace_seconds))
            o["metadata"]["deletionGracePeriodSeconds"] = grace_seconds
        return self.mutate(kind, ns, name, fn)

    @property
    def resource_version(self):
        """The current (global) resourceVersion as a string."""
        with self._lock:
            return str(self._rv)

    # ------------------------------------------------------------------ request log / watches

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    def clear_requests(self):
        with self._lock:
            self._requests.clear()

    def lists(self, resource=None):
        """The LIST requests (optionally of one resource)."""
        r = self._resource(resource).plural if resource else None
        return [q for q in self.requests if q.kind == "list" and (r is None or q.resource == r)]

    def watch_requests(self, resource=None):
        r = self._resource(resource).plural if resource else None
        return [q for q in self.requests if q.watch and (r is None or q.resource == r)]

    def active_watches(self, resource=None):
        """Open watch streams: dicts with resource, namespace, labelSelector, fieldSelector,
        resourceVersion (the watcher's current position), started."""
        r = self._resource(resource).plural if resource else None
        with self._lock:
            return [dict(w) for w in self._watches.values() if r is None or w["resource"] == r]

    def wait_for(self, predicate, timeout=5.0, interval=0.02):
        """Poll predicate() until true (returns its value) or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v:
                return v
            if time.monotonic() >= deadline:
                raise TimeoutError("fakeapi: condition not met within %.1fs" % timeout)
            time.sleep(interval)

    def wait_for_watches(self, n=1, resource=None, timeout=5.0):
        return self.wait_for(lambda: len(self.active_watches(resource)) >= n, timeout)

    def _track(self, conn):
        with self._lock:
            self._conns.add(conn)

    def _untrack(self, conn):
        with self._lock:
            self._conns.discard(conn)

    # ------------------------------------------------------------------ client config files

    def _ca_data(self):
        with open(self.ca_file, "rb") as f:
            return base64.b64encode(f.read()).decode()

    def write_kubeconfig(self, path, auth="token", context="fakeapi", ca="data",
                         namespace=None, client_cert="data", decoy=False, fmt="yaml",
                         token=None):
        """Write a real kubeconfig for this server and return its path.

        auth: "token" | "token-file" | "client-cert" | "none"
        ca: "data" (certificate-authority-data) | "file" (certificate-authority path) |
            "insecure" (insecure-skip-tls-verify)
        client_cert: "data" (client-certificate-data/client-key-data) | "file" (paths)
        decoy: add a second, non-current context (cluster https://127.0.0.1:1, bad token)
        first in every list, so a client that ignores current-context fails.
        fmt: "yaml" (block style, like kubectl writes) | "json"
        path None: <workdir>/kubeconfig-<auth> (removed by stop()).
        auth="token-file" writes <path>.token; rotate_token() rewrites it (rename).
        """
        if path is None:
            path = os.path.join(self._dir, "kubeconfig-" + auth)
        cluster = {"server": self.url}
        if self.tls:
            if ca == "data":
                cluster["certificate-authority-data"] = self._ca_data()
            elif ca == "file":
                cluster["certificate-authority"] = self.ca_file
            elif ca == "insecure":
                cluster["insecure-skip-tls-verify"] = True
        user = {}
        if auth == "token":
            user["token"] = token or self._current_token
        elif auth == "token-file":
            tf = os.path.join(os.path.dirname(os.path.abspath(path)),
                              os.path.basename(path) + ".token")
            _atomic_write(tf, token or self._current_token)
            with self._lock:
                if tf not in self._token_files:
                    self._token_files.append(tf)
            user["tokenFile"] = tf
        elif auth == "client-cert":
            if client_cert == "data":
                with open(self.client_cert, "rb") as f:
                    user["client-certificate-data"] = base64.b64encode(f.read()).decode()
                with open(self.client_key, "rb") as f:
                    user["client-key-data"] = base64.b64encode(f.read()).decode()
            else:
                user["client-certificate"] = self.client_cert
                user["client-key"] = self.client_key
        elif auth != "none":
            raise ValueError("auth must be token, token-file, client-cert or none")
        uname = "%s-%s" % (context, auth)
        ctx = {"cluster": context, "user": uname}
        if namespace:
            ctx["namespace"] = namespace
        clusters = [{"cluster": cluster, "name": context}]
        contexts = [{"context": ctx, "name": context}]
        users = [{"name": uname, "user": user}]
        if decoy:
            clusters.insert(0, {"cluster": {"server": "https://127.0.0.1:1",
                                            "insecure-skip-tls-verify": True},
                                "name": "decoy"})
            contexts.insert(0, {"context": {"cluster": "decoy", "user": "decoy"},
                                "name": "decoy"})
            users.insert(0, {"name": "decoy", "user": {"token": "decoy-token"}})
        cfg = {"apiVersion": "v1", "clusters": clusters, "contexts": contexts,
               "current-context": context, "kind": "Config", "preferences": {}, "users": users}
        text = (json.dumps(cfg, indent=2) if fmt == "json" else _yaml(cfg)) + "\n"
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        return path

    def _write_projected(self, d, files):
        """kubelet's AtomicWriter layout: d/..<ts>/file, d/..data -> ..<ts>, d/file ->
        ..data/file; an update swaps ..data atomically and removes the old directory."""
        data_link = os.path.join(d, "..data")
        cur = {}
        if os.path.islink(data_link):
            old = os.path.join(d, os.readlink(data_link))
            for n in os.listdir(old):
                with open(os.path.join(old, n), "rb") as f:
                    cur[n] = f.read()
        else:
            old = None
        for n, v in files.items():
            cur[n] = v.encode() if isinstance(v, str) else v
        ts = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + secrets.token_hex(4)
        nd = os.path.join(d, ts)
        os.mkdir(nd, 0o755)
        for n, v in cur.items():
            with open(os.path.join(nd, n), "wb") as f:
                f.write(v)
            os.chmod(os.path.join(nd, n), 0o644)
        tmp = os.path.join(d, "..data_tmp")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(ts, tmp)
        os.rename(tmp, data_link)
        for n in cur:
            lp = os.path.join(d, n)
            if not os.path.lexists(lp):
                os.symlink(os.path.join("..data", n), lp)
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def write_incluster(self, d, namespace="envsteer"):
        """Write a service-account directory (token, ca.crt, namespace) laid out like kubelet's
        projected volume and return the env for in-cluster config
        (KUBERNETES_SERVICE_HOST/PORT). rotate_token() rewrites the token here atomically."""
        os.makedirs(d, exist_ok=True)
        files = {"token": self._current_token or "", "namespace": namespace}
        if self.ca_file:
            with open(self.ca_file, "rb") as f:
                files["ca.crt"] = f.read()
        self._write_projected(d, files)
        with self._lock:
            if d not in self._incluster_dirs:
                self._incluster_dirs.append(d)
        return {"KUBERNETES_SERVICE_HOST": self.host, "KUBERNETES_SERVICE_PORT": str(self.port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.port)}

    # ------------------------------------------------------------------ HTTP handling

    def _send(self, h, code, body, ctype="application/json", headers=None, head=False):
        gz = False
        if (ctype == "application/json" and len(body) > self.gzip_threshold
                and "gzip" in h.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, 1)
            gz = True
        h.send_response(code)
        h.send_header("Audit-Id", str(uuid.uuid4()))
        h.send_header("Cache-Control", "no-cache, private")
        h.send_header("Content-Type", ctype)
        if gz:
            h.send_header("Content-Encoding", "gzip")
            h.send_header("Vary", "Accept-Encoding")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        if not head:
            h._headers_buffer.append(b"\r\n" + body)   # headers and body in one write
            h.flush_headers()
        else:
            h.end_headers()

    def _send_status(self, h, entry, code, reason, message, details=None, headers=None):
        if entry is not None:
            entry.status = code
        self._send(h, code, _dumps(status_object(code, reason, message, details)),
                   headers=headers, head=h.command == "HEAD")

    def _send_obj(self, h, entry, obj, code=200):
        entry.status = code
        self._send(h, code, _dumps(obj), head=h.command == "HEAD")

    def _authenticate(self, h):
        """(ok, user). x509 first (union authenticator order), then bearer token."""
        if self.tls:
            try:
                cert = h.connection.getpeercert()
            except (ValueError, OSError):
                cert = None
            if cert:
                cn = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
                return True, cn[0] if cn else "x509-user"
        auth = h.headers.get("Authorization")
        if auth:
            parts = auth.split(" ", 1)
            if len(parts) == 2 and parts[0].lower() == "bearer":
                tok = parts[1].strip()
                with self._lock:
                    valid = list(self._tokens)
                for t in valid:
                    if hmac.compare_digest(tok.encode(), t.encode()):
                        return True, SA_USER
            return False, None
        if self.anonymous:
            return True, "system:anonymous"
        return False, None

    def _route(self, parts):
        """Resource request -> (resource, namespace, name, watch_path) or None."""
        if len(parts) >= 2 and parts[0] == "api" and parts[1] == "v1":
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        watch_path = False
        if rest and rest[0] == "watch":
            watch_path, rest = True, rest[1:]
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 2:
            return None
        for r in self._res.values():
            if r.group == group and r.version == version and r.plural == rest[0]:
                if r.plural == "virtualenvironments" and not self._crd_installed:
                    return None
                return r, ns, rest[1] if len(rest) == 2 else None, watch_path
        return None

    def _handle(self, h, method):
        u = urlsplit(h.path)
        raw_q = parse_qs(u.query, keep_blank_values=True)
        q = {k: v[-1] for k, v in raw_q.items()}
        entry = Request(method, u.path, q, {k.lower(): v for k, v in h.headers.items()})
        with self._lock:
            self._requests.append(entry)
        body = b""
        if h.headers.get("Content-Length"):
            try:
                body = h.rfile.read(min(int(h.headers["Content-Length"]), 1 << 20))
            except (ValueError, OSError):
                pass
        if self._slow:
            self._stopping.wait(self._slow)
        path = u.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]

        ok, user = self._authenticate(h)
        entry.auth_ok, entry.user = ok, user
        # Public (system:public-info-viewer) paths: open without credentials, but a bad
        # token is still 401 there (authentication runs before authorization).
        public = path in ("/healthz", "/livez", "/readyz", "/version")
        if public and (ok or "Authorization" not in h.headers):
            if path == "/version":
                self._send_obj(h, entry, {
                    "major": "1", "minor": "32", "gitVersion": "v1.32.0-fakeapi",
                    "gitCommit": "0" * 40, "gitTreeState": "clean",
                    "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.4",
                    "compiler": "gc", "platform": "linux/amd64"})
            else:
                entry.status = 200
                self._send(h, 200, b"ok", ctype="text/plain; charset=utf-8",
                           head=method == "HEAD")
            return
        if not ok:
            self._send_status(h, entry, 401, "Unauthorized", "Unauthorized")
            return

        route = self._route(parts)
        if route is not None:
            entry.resource = route[0].plural
            entry.namespace = route[1]
            try:
                entry.watch = route[3] or _parse_bool(q.get("watch"))
            except ValueError:
                entry.watch = False
            if method in ("GET", "HEAD"):
                entry.verb = "watch" if entry.watch else ("get" if route[2] else "list")

        # Injected faults apply to API requests (discovery and resources).
        if parts and parts[0] in ("api", "apis"):
            with self._lock:
                f = self._fail.pop(0) if self._fail else None
                g = False
                if f is None and self._garbage > 0:
                    self._garbage -= 1
                    g = True
            if f is not None:
                code, reason, msg, ra = f
                details = {"retryAfterSeconds": ra} if ra else None
                hdr = {"Retry-After": str(ra)} if ra else None
                self._send_status(h, entry, code, reason, msg, details, hdr)
                return
            if g:
                self._send_garbage(h, entry)
                return

        if user == "system:anonymous":
            verb = "watch" if entry.watch else ("list" if route and not route[2] else "get")
            self._send_status(h, entry, 403, "Forbidden",
                              'forbidden: User "system:anonymous" cannot %s path "%s"'
                              % (verb, u.path), {})
            return

        if (len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "events"
                and method == "POST"):
            self._create_event(h, entry, parts[3], body, user)
            return

        if route is None:
            d = self._discovery(parts)
            if d is not None and method in ("GET", "HEAD"):
                self._send_obj(h, entry, d)
            else:
                self._send_status(h, entry, 404, "NotFound",
                                  "the server could not find the requested resource", {})
            return

        r, ns, name, watch_path = route
        if method not in ("GET", "HEAD"):
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete"}[method]
            entry.verb = verb
            self._forbid_status(h, entry, r, verb, ns, name, user)
            return
        try:
            watch = watch_path or _parse_bool(q.get("watch"))
        except ValueError as e:
            self._send_status(h, entry, 400, "BadRequest", str(e))
            return
        entry.watch = watch
        verb = "watch" if watch else ("get" if name else "list")
        entry.verb = verb
        with self._lock:
            forbidden = (r.plural, verb) in self._forbidden
        if forbidden:
            self._forbid_status(h, entry, r, verb, ns, name, user)
            return
        if watch:
            if name:
                fs = q.get("fieldSelector", "")
                q["fieldSelector"] = ("metadata.name=%s" % name) + ("," + fs if fs else "")
            self._serve_watch(h, entry, r, ns, q)
        elif name:
            if ns is None and r.namespaced:
                self._send_status(h, entry, 404, "NotFound",
                                  "the server could not find the requested resource", {})
                return
            o = self.get(r, ns, name)
            if o is None:
                self._send_status(h, entry, 404, "NotFound",
                                  '%s "%s" not found' % (r.qualified, name),
                                  {"name": name, "group": r.group, "kind": r.plural}
                                  if r.group else {"name": name, "kind": r.plural})
            else:
                self._send_obj(h, entry, o)
        else:
            self._serve_list(h, entry, r, ns, q)

    def _create_event(self, h, entry, ns, body, user):
        """POST /api/v1/namespaces/<ns>/events: core/v1 Events are stored (not watchable);
        a name that exists is 409 AlreadyExists, like the apiserver."""
        entry.resource, entry.namespace, entry.verb = "events", ns, "create"
        with self._lock:
            forbidden = ("events", "create") in self._forbidden
        if forbidden:
            self._send_status(h, entry, 403, "Forbidden",
                              'events is forbidden: User "%s" cannot create resource "events" in API '
                              'group "" in the namespace "%s"' % (user, ns), {"kind": "events"})
            return
        try:
            ev = json.loads(body.decode())
            assert isinstance(ev, dict) and ev.get("kind") == "Event" and ev.get("apiVersion") == "v1"
            md = ev.setdefault("metadata", {})
            assert md.get("name") and md.get("namespace", ns) == ns
            assert isinstance(ev.get("involvedObject"), dict)
        except (ValueError, AssertionError, UnicodeDecodeError):
            self._send_status(h, entry, 400, "BadRequest", "not a core/v1 Event for namespace %s" % ns)
            return
        key = "%s/%s" % (ns, md["name"])
        with self._lock:
            if key in self._events:
                exists = True
            else:
                exists = False
                self._rv += 1
                md.update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion=str(self._rv),
                          creationTimestamp=_now())
                self._events[key] = ev
        if exists:
            self._send_status(h, entry, 409, "AlreadyExists", 'events "%s" already exists' % md["name"],
                              {"name": md["name"], "kind": "events"})
        else:
            self._send_obj(h, entry, ev, 201)

    def events(self, ns=None):
        """The Events POSTed so far (copies), in creation order."""
        with self._lock:
            return [copy.deepcopy(e) for k, e in self._events.items()
                    if ns is None or e["metadata"]["namespace"] == ns]

    def _forbid_status(self, h, entry, r, verb, ns, name, user):
        what = '%s "%s"' % (r.qualified, name) if name else r.qualified
        scope = 'in the namespace "%s"' % ns if ns else "at the cluster scope"
        self._send_status(h, entry, 403, "Forbidden",
                          '%s is forbidden: User "%s" cannot %s resource "%s" in API group '
                          '"%s" %s' % (what, user, verb, r.plural, r.group, scope),
                          {"name": name, "group": r.group, "kind": r.plural} if name
                          else {"group": r.group, "kind": r.plural})

    def _send_garbage(self, h, entry):
        entry.status = 200
        body = b"\x89<html><body>upstream garbage \xff\xfe{not json\n"
        if entry.watch:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            h.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        else:
            self._send(h, 200, body)

    def _discovery(self, parts):
        with self._lock:
            res = [r for r in self._res.values()
                   if r.plural != "virtualenvironments" or self._crd_installed]

        def resources(group, version):
            out = []
            for r in res:
                if r.group == group and r.version == version:
                    d = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                         "kind": r.kind,
                         "verbs": ["delete", "deletecollection", "get", "list", "patch",
                                   "create", "update", "watch"]}
                    if r.short:
                        d["shortNames"] = list(r.short)
                    if r.categories:
                        d["categories"] = list(r.categories)
                    d["storageVersionHash"] = base64.b64encode(
                        r.qualified.encode()[:8]).decode()
                    out.append(d)
            return out

        groups = []
        for r in res:
            if r.group and r.group not in [g["name"] for g in groups]:
                gv = {"groupVersion": r.api_version, "version": r.version}
                groups.append({"name": r.group, "versions": [gv], "preferredVersion": gv})
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                    "serverAddress": "%s:%d" % (
                                                        self.host, self.port)}]}
        if parts == ["api", "v1"]:
            return {"kind": "APIResourceList", "groupVersion": "v1",
                    "resources": resources("", "v1")}
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        if len(parts) == 2 and parts[0] == "apis":
            for g in groups:
                if g["name"] == parts[1]:
                    return dict({"kind": "APIGroup", "apiVersion": "v1"}, **g)
        if len(parts) == 3 and parts[0] == "apis":
            rl = resources(parts[1], parts[2])
            if rl:
                return {"kind": "APIResourceList", "apiVersion": "v1",
                        "groupVersion": "%s/%s" % (parts[1], parts[2]), "resources": rl}
        return None

    # ------------------------------------------------------------------ LIST

    def _snapshot(self, r, rv):
        """The resource's objects as they were at rv (needs rv >= floor)."""
        objs = dict(self._objs[r.plural])
        for erv, t, o, prev in reversed(self._hist[r.plural]):
            if erv <= rv:
                break
            k = self._key(o)
            if t == ADDED:
                objs.pop(k, None)
            else:
                objs[k] = prev
        return objs

    def _wait_rv(self, n):
        """Wait (lock held) until the store reaches resourceVersion n; False on timeout."""
        return self._cond.wait_for(lambda: self._rv >= n or self._stopping.is_set(),
                                   timeout=self.too_large_wait) and self._rv >= n

    def _too_large(self, n):
        return (504, "Timeout", "Timeout: Too large resource version: %d, current: %d"
                % (n, self._rv),
                {"causes": [{"reason": "ResourceVersionTooLarge",
                             "message": "Too large resource version"}],
                 "retryAfterSeconds": 1})

    def _list_item(self, r, o):
        if r.builtin:
            return {k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
        return o

    def _serve_list(self, h, entry, r, ns, q):
        try:
            lsel = LabelSelector(q.get("labelSelector", ""))
            fsel = FieldSelector(q.get("fieldSelector", ""), r)
        except SelectorError as e:
            self._send_status(h, entry, 400, "BadRequest", str(e))
            return
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            self._send_status(h, entry, 400, "BadRequest",
                              "limit: Invalid value: %s: must be an integer" % q.get("limit"))
            return
        limit = max(limit, 0)
        cont = q.get("continue", "")
        rvp = q.get("resourceVersion")
        match = q.get("resourceVersionMatch", "")
        bad = None
        if cont and rvp not in (None, ""):
            bad = "specifying resource version is not allowed when using continue"
        elif match and rvp in (None, ""):
            bad = "resourceVersionMatch is forbidden unless resourceVersion is provided"
        elif match and cont:
            bad = "resourceVersionMatch is forbidden when continue is provided"
        elif match and match not in ("Exact", "NotOlderThan"):
            bad = 'resourceVersionMatch: Unsupported value: "%s"' % match
        elif match == "Exact" and rvp == "0":
            bad = 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"'
        rv_num = None
        if bad is None and rvp not in (None, ""):
            try:
                rv_num = int(rvp)
                if rv_num < 0:
                    raise ValueError
            except ValueError:
                bad = "resourceVersion: Invalid value: %s: must be a non-negative integer" % rvp
        start = None
        if bad is None and cont:
            try:
                tok_rv, start = decode_continue(cont)
            except ValueError as e:
                bad = str(e)
        if bad:
            self._send_status(h, entry, 400, "BadRequest", bad)
            return
        err = None
        objs = list_rv = None
        with self._cond:
            if cont:
                if tok_rv < self._floor[r.plural] or tok_rv < self._continue_floor:
                    err = (410, "Expired",
                           "The provided continue parameter is too old to display a consistent "
                           "list result. You can start a new list without the continue "
                           "parameter.", None)
                else:
                    objs, list_rv = self._snapshot(r, tok_rv), tok_rv
            elif rv_num is None:
                objs, list_rv = self._objs[r.plural], self._rv
            elif rv_num == 0:
                objs, list_rv = self._objs[r.plural], self._rv
                if not self.paginate_rv0:
                    limit = 0
            elif rv_num > self._rv and not self._wait_rv(rv_num):
                err = self._too_large(rv_num)
            elif match == "Exact" or (limit and not match):
                if rv_num < self._floor[r.plural]:
                    err = (410, "Expired", "The resourceVersion for the provided list is too "
                           "old.", None)
                else:
                    objs, list_rv = self._snapshot(r, rv_num), rv_num
            else:
                objs, list_rv = self._objs[r.plural], self._rv
            if objs is not None:
                objs = dict(objs)
        if err is not None:
            self._send_status(h, entry, *err)
            return
        prefix = "%s/" % ns if ns else ""
        keys = sorted(k[len(prefix):] for k in objs if k.startswith(prefix))
        if start:
            keys = [k for k in keys if k >= start]
        items, last, more, idx = [], None, False, 0
        for idx, k in enumerate(keys):
            if limit and len(items) >= limit:
                more = True
                break
            last = k
            o = objs[prefix + k]
            if lsel.matches(o["metadata"].get("labels")) and fsel.matches(o):
                items.append(self._list_item(r, o))
        meta = {"resourceVersion": str(list_rv)}
        if more:
            meta["continue"] = encode_continue(list_rv, last + "\x00")
            if lsel.empty and fsel.empty:
                meta["remainingItemCount"] = len(keys) - idx
        if r.builtin:
            body = {"kind": r.list_kind, "apiVersion": r.api_version, "metadata": meta,
                    "items": items}
        else:
            meta.setdefault("continue", "")
            body = {"apiVersion": r.api_version, "items": items, "kind": r.list_kind,
                    "metadata": dict(sorted(meta.items()))}
        self._send_obj(h, entry, body)

    # ------------------------------------------------------------------ WATCH

    def _bookmark_object(self, r, rv, initial_end=False):
        md = {"resourceVersion": str(rv), "creationTimestamp": None}
        if initial_end:
            md["annotations"] = {INITIAL_EVENTS_END: "true"}
        if r.plural == "pods":
            return {"kind": "Pod", "apiVersion": "v1", "metadata": md,
                    "spec": {"containers": None}, "status": {}}
        if r.plural == "services":
            return {"kind": "Service", "apiVersion": "v1", "metadata": md, "spec": {},
                    "status": {"loadBalancer": {}}}
        if r.plural == "endpointslices":
            return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                    "metadata": md, "addressType": "", "endpoints": None}
        md.pop("creationTimestamp")
        return {"apiVersion": r.api_version, "kind": r.kind, "metadata": md}

    @staticmethod
    def _convert(ev, flt):
        """The cacher's rule: an object entering the selector is ADDED, leaving it DELETED
        (previous content, the event's resourceVersion)."""
        rv, t, obj, prev = ev
        cur_ok = t != DELETED and flt(obj)
        old_ok = prev is not None and flt(prev)
        if cur_ok and not old_ok:
            return ADDED, obj
        if cur_ok and old_ok:
            return MODIFIED, obj
        if old_ok:
            if t == DELETED:
                return DELETED, obj
            o = copy.deepcopy(prev)
            o["metadata"]["resourceVersion"] = str(rv)
            return DELETED, o
        return None

    def _write_chunk(self, h, data):
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _serve_watch(self, h, entry, r, ns, q):
        try:
            lsel = LabelSelector(q.get("labelSelector", ""))
            fsel = FieldSelector(q.get("fieldSelector", ""), r)
            bookmarks = _parse_bool(q.get("allowWatchBookmarks"))
            send_initial = q.get("sendInitialEvents")
            send_initial = None if send_initial is None else _parse_bool(send_initial)
            timeout = q.get("timeoutSeconds")
            timeout = float(int(timeout)) if timeout not in (None, "") else None
        except SelectorError as e:
            self._send_status(h, entry, 400, "BadRequest", str(e))
            return
        except ValueError as e:
            self._send_status(h, entry, 400, "BadRequest", str(e))
            return
        rvp = q.get("resourceVersion")
        match = q.get("resourceVersionMatch", "")
        if send_initial is not None:
            if match != "NotOlderThan" or (send_initial and not bookmarks):
                self._send_status(
                    h, entry, 400, "BadRequest",
                    "sendInitialEvents requires resourceVersionMatch=NotOlderThan and "
                    "allowWatchBookmarks=true")
                return
        elif match:
            self._send_status(h, entry, 400, "BadRequest",
                              "resourceVersionMatch is forbidden for watch")
            return
        rv_num = None
        if rvp not in (None, "", "0"):
            try:
                rv_num = int(rvp)
                if rv_num < 0:
                    raise ValueError
            except ValueError:
                self._send_status(h, entry, 400, "BadRequest",
                                  "resourceVersion: Invalid value: %s" % rvp)
                return

        def flt(o):
            md = o["metadata"]
            return ((ns is None or md.get("namespace") == ns) and lsel.matches(md.get("labels"))
                    and fsel.matches(o))

        too_old = None
        initial = []
        with self._cond:
            if rv_num is not None and rv_num > self._rv and not self._wait_rv(rv_num):
                err = self._too_large(rv_num)
            else:
                err = None
        if err is not None:
            self._send_status(h, entry, *err)
            return
        with self._cond:
            if rv_num is None and send_initial is not False or send_initial:
                for k in sorted(self._objs[r.plural]):
                    o = self._objs[r.plural][k]
                    if flt(o):
                        initial.append((ADDED, o))
                cursor = self._rv
            elif rv_num is None:              # sendInitialEvents=false, rv unset/0: from now
                cursor = self._rv
            elif rv_num < self._floor[r.plural]:
                too_old = (rv_num, self._floor[r.plural] + 1)
                cursor = rv_num
            else:
                cursor = rv_num
            gen = self._break_gen
            self._watch_seq += 1
            wid = self._watch_seq
            info = {"id": wid, "resource": r.plural, "namespace": ns,
                    "labelSelector": lsel.text, "fieldSelector": fsel.text,
                    "resourceVersion": str(cursor), "started": time.time(),
                    "bookmarks": bookmarks}
            if too_old is None:
                self._watches[wid] = info
        entry.status = 200
        try:
            h.send_response(200)
            h.send_header("Audit-Id", str(uuid.uuid4()))
            h.send_header("Cache-Control", "no-cache, private")
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            if too_old is not None:
                st = status_object(410, "Expired", "too old resource version: %d (%d)" % too_old)
                self._write_chunk(h, _dumps({"type": ERROR, "object": st}))
                h.wfile.write(b"0\r\n\r\n")
                return
            self._stream(h, r, wid, info, gen, cursor, initial, flt, bookmarks,
                         bool(send_initial), timeout)
        finally:
            with self._lock:
                self._watches.pop(wid, None)

    def _stream(self, h, r, wid, info, gen, cursor, initial, flt, bookmarks, initial_end,
                timeout):
        start = time.monotonic()
        limit = self.watch_max_seconds if timeout is None else min(timeout, self.watch_max_seconds)
        deadline = start + max(0.0, limit)
        next_bm = start + self.bookmark_interval

        def send(etype, obj):
            if self._slow_events:
                self._stopping.wait(self._slow_events)
            self._write_chunk(h, _dumps({"type": etype, "object": obj}))

        def abort():
            partial, rst = self._break_partial, self._break_rst
            if partial:
                line = _dumps({"type": BOOKMARK, "object": self._bookmark_object(r, cursor)})
                try:
                    h.wfile.write(b"%x\r\n%s" % (len(line), line[:len(line) // 2]))
                except OSError:
                    pass
            _raw_shutdown(h.connection, rst=rst)
            h.close_connection = True
            raise _Abort()

        for etype, obj in initial:
            if self._break_gen != gen:
                abort()
            send(etype, obj)
        if initial_end:
            send(BOOKMARK, self._bookmark_object(r, cursor, initial_end=True))
        while True:
            out, action = [], None
            with self._cond:
                while True:
                    if self._break_gen != gen or self._stopping.is_set():
                        action = "break"
                        break
                    now = time.monotonic()
                    if not self._stalled:
                        if cursor < self._floor[r.plural]:
                            action = "end"        # fell out of the window: watcher terminated
                            break
                        # the history is in resourceVersion order: only its tail is new (a scan
                        # of all of it per wake-up, under the lock, cost the churn bench ~2 ms
                        # per event and watch at 30 000 events of history)
                        newer = []
                        for ev in reversed(self._hist[r.plural]):
                            if ev[0] <= cursor:
                                break
                            newer.append(ev)
                        for ev in reversed(newer):
                            c = self._convert(ev, flt)
                            if c is not None:
                                out.append(c)
                        cursor = self._rv
                        info["resourceVersion"] = str(cursor)
                        if out:
                            break
                        if r.plural == "virtualenvironments" and not self._crd_installed:
                            action = "end"            # CRD removed: its watches end
                            break
                        if bookmarks and now >= next_bm:
                            action = "bookmark"
                            break
                    if now >= deadline:
                        action = "end"
                        break
                    if _peer_gone(h.connection):
                        action = "gone"
                        break
                    wake = deadline
                    if bookmarks and not self._stalled:
                        wake = min(wake, next_bm)
                    self._cond.wait(max(0.005, min(wake - now, 0.2)))
            if action == "break":
                abort()
            if action == "gone":
                h.close_connection = True
                return
            for etype, obj in out:
                if self._break_gen != gen:
                    abort()
                send(etype, obj)
            if action == "bookmark":
                send(BOOKMARK, self._bookmark_object(r, cursor))
                next_bm = time.monotonic() + self.bookmark_interval
            if action == "end":
                h.wfile.write(b"0\r\n\r\n")
                return
