"""Tests of fakeapi.py, the loopback Kubernetes API server the Kubernetes-mode tests use.

Python's http.client/ssl, curl and (when installed) kubectl are the clients. Everything
talks to 127.0.0.1 (one test to ::1); every read has a timeout. These tests need neither
root nor the agent binary.
"""
import base64
import gzip
import http.client
import json
import os
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse

import pytest

import fakeapi
from fakeapi import FakeAPI, make_endpointslice, make_pod, make_service, make_virtualenv

KUBECTL = "/usr/bin/kubectl"
CURL = shutil.which("curl") or "/usr/bin/curl"


@pytest.fixture(scope="session")
def e2e_prerequisites():
    """Overrides conftest's root/BPF/agent check: the fake API server needs none of it."""
    yield


@pytest.fixture
def api():
    a = FakeAPI(bookmark_interval=0.3)
    a.start()
    yield a
    a.stop()
    assert a.errors == [], "server-side exceptions:\n" + "\n".join(a.errors)


# --------------------------------------------------------------------------- client helpers

class Client:
    def __init__(self, api, token="secret-token", cert=False, timeout=5.0, cafile=None):
        self.api = api
        self.token = token
        self.cert = cert
        self.timeout = timeout
        self.cafile = cafile or api.ca_file

    def context(self):
        ctx = ssl.create_default_context(cafile=self.cafile)
        if self.cert:
            ctx.load_cert_chain(self.api.client_cert, self.api.client_key)
        return ctx

    def conn(self):
        if self.api.tls:
            return http.client.HTTPSConnection(self.api.host, self.api.port,
                                               context=self.context(), timeout=self.timeout)
        return http.client.HTTPConnection(self.api.host, self.api.port, timeout=self.timeout)

    def headers(self, extra=None):
        h = {"Accept": "application/json"}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        h.update(extra or {})
        return h

    def get(self, path, headers=None, **params):
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        c = self.conn()
        try:
            c.request("GET", url, headers=self.headers(headers))
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def json(self, path, **params):
        st, _, body = self.get(path, **params)
        return st, json.loads(body)

    def watch(self, path, **params):
        return Watch(self, path, params)


class Watch:
    """A watch stream over a raw (TLS) socket with a strict chunked-encoding parser (http.client
    silently turns a truncated chunked body into EOF), read by a thread into a queue:
    ("event", dict) ... then ("end", None) after the terminating chunk, or ("error", exc) when
    the stream breaks (EOF or reset without the terminating chunk, or a non-JSON line)."""

    def __init__(self, client, path, params):
        params = dict(params)
        params.setdefault("watch", "1")
        api = client.api
        raw = socket.create_connection((api.host, api.port), timeout=10)
        self.sock = client.context().wrap_socket(raw, server_hostname=api.host) \
            if api.tls else raw
        req = "GET %s?%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: application/json\r\n" % (
            path, urllib.parse.urlencode(params), api.host, api.port)
        if client.token:
            req += "Authorization: Bearer %s\r\n" % client.token
        self.sock.sendall((req + "\r\n").encode())
        self.f = self.sock.makefile("rb")
        status = self.f.readline().decode()
        self.status = int(status.split()[1])
        self.headers = {}
        while True:
            line = self.f.readline().decode().rstrip("\r\n")
            if not line:
                break
            k, v = line.split(":", 1)
            self.headers[k.strip()] = v.strip()
        self.q = queue.Queue()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            assert self.headers.get("Transfer-Encoding") == "chunked", self.headers
            buf = b""
            while True:
                size = self.f.readline()
                if not size.endswith(b"\r\n"):
                    raise EOFError("stream ended without the terminating chunk")
                n = int(size, 16)
                if n == 0:
                    if self.f.readline() != b"\r\n":
                        raise EOFError("bad trailer")
                    self.q.put(("end", None))
                    return
                data = self.f.read(n)
                if len(data) < n or self.f.read(2) != b"\r\n":
                    raise EOFError("truncated chunk")
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self.q.put(("event", json.loads(line)))
        except Exception as e:  # noqa: BLE001
            self.q.put(("error", e))

    def next(self, timeout=3.0):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return ("timeout", None)

    def event(self, timeout=3.0, skip_bookmarks=True):
        while True:
            kind, v = self.next(timeout)
            assert kind == "event", "expected an event, got %s %r" % (kind, v)
            if skip_bookmarks and v["type"] == "BOOKMARK":
                continue
            return v

    def expect_quiet(self, seconds, skip_bookmarks=True):
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            kind, v = self.next(left)
            if kind == "timeout":
                return
            if kind == "event" and skip_bookmarks and v["type"] == "BOOKMARK":
                continue
            raise AssertionError("expected nothing, got %s %r" % (kind, v))

    def close(self):
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.t.join(timeout=3)


def seed(api):
    """A small cluster: one object of every kind."""
    svc = api.create(make_service("default", "web", "10.96.0.10", [("http", 80, 8080)],
                                  {"app": "web"}))
    pod = api.create(make_pod("default", "web-1", "10.244.1.5",
                              {"app": "web", "virtual-env": "dev"}, "node-1"))
    eps = api.create(make_endpointslice("default", "web-abcde", "web",
                                        [("10.244.1.5", True, "web-1", "node-1",
                                          pod["metadata"]["uid"])],
                                        [("http", 8080)], service_uid=svc["metadata"]["uid"]))
    ve = api.create(make_virtualenv("default", "ve", auto_inject=True, default_subset="dev"))
    return svc, pod, eps, ve


PATHS = {
    "services": "/api/v1/services",
    "pods": "/api/v1/pods",
    "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices",
    "virtualenvironments": "/apis/env.alibaba.com/v1alpha2/virtualenvironments",
}


# --------------------------------------------------------------------------- TLS and auth

def test_auth_401_is_a_status_and_tokens_and_client_certs_work(api):
    st, body = Client(api, token=None).json("/api/v1/pods")
    assert st == 401
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    assert Client(api, token="wrong").json("/api/v1/pods")[0] == 401
    st, body = Client(api).json("/api/v1/pods")
    assert st == 200 and body["kind"] == "PodList"
    st, body = Client(api, token=None, cert=True).json("/api/v1/pods")
    assert st == 200
    # A bad token is 401 even on public paths; no credentials there is fine.
    assert Client(api, token="wrong").get("/version")[0] == 401
    assert Client(api, token=None).get("/healthz")[:1] == (200,)
    log = api.requests
    assert [(q.auth_ok, q.status) for q in log[:4]] == [(False, 401), (False, 401),
                                                        (True, 200), (True, 200)]
    assert log[2].user == fakeapi.SA_USER and log[3].user == "envsteer-client"
    # The server certificate is only trusted through the test CA.
    untrusted = http.client.HTTPSConnection(api.host, api.port, timeout=3,
                                            context=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusted.request("GET", "/")
    untrusted.close()


def test_curl_with_cacert_and_token(api):
    seed(api)
    base = [CURL, "-sS", "--max-time", "5"]
    r = subprocess.run(base + ["--cacert", api.ca_file, "-H",
                               "Authorization: Bearer secret-token",
                               api.url + "/api/v1/namespaces/default/pods"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert [p["metadata"]["name"] for p in body["items"]] == ["web-1"]
    r = subprocess.run(base + [api.url + "/api/v1/pods"], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 60, (r.returncode, r.stderr)   # peer certificate not trusted
    # curl would use HTTP/2 if offered; the server offers only http/1.1 (ALPN).
    r = subprocess.run(base + ["--http2", "-o", "/dev/null", "-w", "%{http_version}",
                               "--cacert", api.ca_file, "-H", "Authorization: Bearer x",
                               api.url + "/api/v1/pods"], capture_output=True, text=True,
                       timeout=10)
    assert r.stdout == "1.1"


def test_token_rotation_and_incluster_dir(api, tmp_path):
    d = str(tmp_path / "sa")
    env = api.write_incluster(d)
    assert env == {"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                   "KUBERNETES_SERVICE_PORT": str(api.port),
                   "KUBERNETES_SERVICE_PORT_HTTPS": str(api.port)}
    assert open(os.path.join(d, "token")).read() == "secret-token"
    assert open(os.path.join(d, "ca.crt")).read() == open(api.ca_file).read()
    assert os.readlink(os.path.join(d, "token")) == "..data/token"
    before = os.readlink(os.path.join(d, "..data"))
    w = Client(api).watch("/api/v1/pods", resourceVersion=api.resource_version)
    api.rotate_token("rotated-token")
    assert Client(api).get("/api/v1/pods")[0] == 401
    assert Client(api, token="rotated-token").get("/api/v1/pods")[0] == 200
    assert open(os.path.join(d, "token")).read() == "rotated-token"
    after = os.readlink(os.path.join(d, "..data"))
    assert after != before and not os.path.exists(os.path.join(d, before))
    # Like the real server, an open watch authenticated earlier keeps streaming.
    api.create(make_pod("default", "p", "10.244.0.9", {}, "node-1"))
    assert w.event()["type"] == "ADDED"
    w.close()
    api.rotate_token("third", keep_old=True)
    assert Client(api, token="rotated-token").get("/api/v1/pods")[0] == 200
    assert Client(api, token="third").get("/api/v1/pods")[0] == 200


# --------------------------------------------------------------------------- object shapes

def test_object_shapes_like_the_real_api(api):
    svc, pod, eps, ve = seed(api)
    assert svc["kind"] == "Service" and svc["apiVersion"] == "v1"
    md = pod["metadata"]
    assert set(md) >= {"name", "namespace", "uid", "resourceVersion", "creationTimestamp",
                       "labels", "managedFields"}
    assert md["resourceVersion"].isdigit() and md["creationTimestamp"].endswith("Z")
    assert svc["spec"]["clusterIPs"] == ["10.96.0.10"] and svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "protocol": "TCP",
                                     "targetPort": 8080}]
    assert pod["spec"]["nodeName"] == "node-1" and pod["status"]["podIP"] == "10.244.1.5"
    assert pod["status"]["podIPs"] == [{"ip": "10.244.1.5"}]
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True" and ready["ContainersReady"] == "True"
    cs = pod["status"]["containerStatuses"][0]
    assert cs["containerID"].startswith("containerd://") and len(cs["containerID"]) == 77
    assert pod["status"]["qosClass"] == "BestEffort"
    assert eps["addressType"] == "IPv4" and eps["ports"] == [
        {"name": "http", "protocol": "TCP", "port": 8080}]
    ep = eps["endpoints"][0]
    assert ep["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert ep["targetRef"] == {"kind": "Pod", "namespace": "default", "name": "web-1",
                               "uid": pod["metadata"]["uid"]}
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
    assert eps["metadata"]["ownerReferences"][0]["uid"] == svc["metadata"]["uid"]
    assert ve["spec"] == {"envHeader": {"name": "X-Virtual-Env", "autoInject": True},
                          "envLabel": {"name": "virtual-env", "splitter": ".",
                                       "defaultSubset": "dev"}}
    # Variants a client must cope with.
    pending = make_pod("default", "pending", None, {"a": "b"}, "node-1")
    assert "podIP" not in pending["status"] and pending["status"]["phase"] == "Pending"
    notready = make_pod("default", "nr", "10.244.0.2", {}, "node-1", ready=False,
                        qos="Guaranteed", runtime="cri-o")
    assert {c["type"]: c["status"] for c in notready["status"]["conditions"]}["Ready"] == "False"
    assert notready["status"]["containerStatuses"][0]["containerID"].startswith("cri-o://")
    empty = api.create(make_endpointslice("default", "web-empty", "web", [], [80]))
    st, _, raw = Client(api).get("/apis/discovery.k8s.io/v1/namespaces/default/"
                                 "endpointslices/web-empty")
    assert st == 200 and b'"endpoints":null' in raw and b'"name":""' in raw
    assert empty["endpoints"] is None
    headless = make_service("default", "h", "None", [5432], {"app": "db"})
    assert headless["spec"]["clusterIP"] == "None" and "name" not in headless["spec"]["ports"][0]
    dual = make_service("default", "d", ["10.96.0.11", "fd00:96::11"], [80, 443])
    assert dual["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    assert [p["name"] for p in dual["spec"]["ports"]] == ["tcp-80", "tcp-443"]
    # HTML characters are escaped the way Go's encoder does it.
    api.create(make_pod("default", "esc", "10.244.0.3", {}, "node-1",
                        annotations={"note": "<a&b>"}))
    raw = Client(api).get("/api/v1/namespaces/default/pods/esc")[2]
    assert b"\\u003ca\\u0026b\\u003e" in raw and json.loads(raw)["metadata"]["annotations"] == {
        "note": "<a&b>"}


def test_list_shape_items_without_kind_and_get_one(api):
    seed(api)
    rv = api.resource_version
    for res, path in PATHS.items():
        st, body = Client(api).json(path)
        assert st == 200
        r = api._resource(res)
        assert body["kind"] == r.list_kind and body["apiVersion"] == r.api_version
        assert body["metadata"]["resourceVersion"] == rv
        assert len(body["items"]) == 1
        item = body["items"][0]
        if r.builtin:
            assert "kind" not in item and "apiVersion" not in item
            assert "continue" not in body["metadata"]
        else:   # custom resources are unstructured: items keep kind/apiVersion
            assert item["kind"] == "VirtualEnvironment" and body["metadata"]["continue"] == ""
    st, body = Client(api).json("/api/v1/namespaces/default/pods/web-1")
    assert st == 200 and body["kind"] == "Pod" and body["metadata"]["name"] == "web-1"
    st, body = Client(api).json("/api/v1/namespaces/default/pods/nope")
    assert st == 404 and body["reason"] == "NotFound" and body["message"] == 'pods "nope" not found'
    assert body["details"] == {"name": "nope", "kind": "pods"}
    st, body = Client(api).json("/api/v1/namespaces/other/pods")
    assert st == 200 and body["items"] == []
    st, body = Client(api).json("/apis/nope.example.com/v1/things")
    assert st == 404 and body["kind"] == "Status"


def test_gzip_for_large_responses(api):
    api.gzip_threshold = 2000
    for i in range(5):
        api.create(make_pod("default", "p%d" % i, "10.244.0.%d" % i, {}, "node-1"))
    st, hdr, raw = Client(api).get("/api/v1/pods", headers={"Accept-Encoding": "gzip"})
    assert st == 200 and hdr["Content-Encoding"] == "gzip"
    assert len(json.loads(gzip.decompress(raw))["items"]) == 5
    st, hdr, raw = Client(api).get("/api/v1/pods")
    assert "Content-Encoding" not in hdr and len(json.loads(raw)["items"]) == 5


# --------------------------------------------------------------------------- LIST

def test_pagination_is_a_consistent_snapshot(api):
    names = [("a", "x1"), ("a", "x2"), ("a-b", "x1"), ("b", "x1"), ("b", "x2"), ("b", "x3"),
             ("c", "x1")]
    for i, (ns, n) in enumerate(names):
        api.create(make_pod(ns, n, "10.244.0.%d" % (i + 1), {"i": str(i)}, "node-1"))
    c = Client(api)
    st, p1 = c.json("/api/v1/pods", limit=3)
    assert st == 200
    key = lambda o: "%s/%s" % (o["metadata"]["namespace"], o["metadata"]["name"])  # noqa: E731
    # etcd key order: "a-b/..." sorts before "a/..." ('-' < '/').
    assert [key(o) for o in p1["items"]] == ["a-b/x1", "a/x1", "a/x2"]
    assert p1["metadata"]["remainingItemCount"] == 4
    tok = p1["metadata"]["continue"]
    assert fakeapi.decode_continue(tok) == (int(p1["metadata"]["resourceVersion"]), "a/x2\x00")
    # Changes between pages do not show: the list is a snapshot at the first page's RV.
    api.create(make_pod("b", "x0", "10.244.0.99", {}, "node-1"))
    api.relabel("pods", "b", "x2", {"i": "changed"})
    api.delete("pods", "c", "x1")
    st, p2 = c.json("/api/v1/pods", limit=3, **{"continue": tok})
    assert [key(o) for o in p2["items"]] == ["b/x1", "b/x2", "b/x3"]
    assert p2["items"][1]["metadata"]["labels"] == {"i": "4"}
    assert p2["metadata"]["resourceVersion"] == p1["metadata"]["resourceVersion"]
    assert p2["metadata"]["remainingItemCount"] == 1
    st, p3 = c.json("/api/v1/pods", limit=3, **{"continue": p2["metadata"]["continue"]})
    assert [key(o) for o in p3["items"]] == ["c/x1"]
    assert "continue" not in p3["metadata"]
    # Namespaced and with a selector: no remainingItemCount, pages fill up to the limit.
    st, q1 = c.json("/api/v1/namespaces/b/pods", limit=2, labelSelector="i!=3")
    assert [o["metadata"]["name"] for o in q1["items"]] == ["x0", "x2"]
    assert "remainingItemCount" not in q1["metadata"]
    st, q2 = c.json("/api/v1/namespaces/b/pods", limit=2, labelSelector="i!=3",
                    **{"continue": q1["metadata"]["continue"]})
    assert [o["metadata"]["name"] for o in q2["items"]] == ["x3"]
    assert "continue" not in q2["metadata"]
    # A page that fills up while keys remain has a continue even if nothing else matches:
    # the last page can be empty (like the etcd store).
    st, q1 = c.json("/api/v1/namespaces/b/pods", limit=2, labelSelector="i in (3,changed)")
    assert [o["metadata"]["name"] for o in q1["items"]] == ["x1", "x2"]
    st, q2 = c.json("/api/v1/namespaces/b/pods", limit=2, labelSelector="i in (3,changed)",
                    **{"continue": q1["metadata"]["continue"]})
    assert q2["items"] == [] and "continue" not in q2["metadata"]


def test_continue_errors_410_and_400(api):
    for i in range(4):
        api.create(make_pod("default", "p%d" % i, "10.244.0.%d" % i, {}, "node-1"))
    c = Client(api)
    tok = c.json("/api/v1/pods", limit=2)[1]["metadata"]["continue"]
    api.expire_continue_tokens()
    st, body = c.json("/api/v1/pods", limit=2, **{"continue": tok})
    assert st == 410 and body["kind"] == "Status" and body["reason"] == "Expired"
    assert body["code"] == 410
    tok = c.json("/api/v1/pods", limit=2)[1]["metadata"]["continue"]
    assert c.json("/api/v1/pods", limit=2, **{"continue": tok})[0] == 200
    api.create(make_pod("default", "late", "10.244.0.50", {}, "node-1"))
    api.compact()
    assert c.json("/api/v1/pods", limit=2, **{"continue": tok})[0] == 410
    st, body = c.json("/api/v1/pods", limit=2, **{"continue": "%%%garbage"})
    assert st == 400 and body["reason"] == "BadRequest"
    assert "continue key is not valid" in body["message"]
    tok = c.json("/api/v1/pods", limit=2)[1]["metadata"]["continue"]
    st, body = c.json("/api/v1/pods", limit=2, resourceVersion="5", **{"continue": tok})
    assert st == 400 and "not allowed when using continue" in body["message"]


def test_list_resource_version_semantics(api):
    c = Client(api)
    api.create(make_pod("default", "a", "10.244.0.1", {"v": "1"}, "node-1"))
    rv1 = api.resource_version
    api.relabel("pods", "default", "a", {"v": "2"})
    api.create(make_pod("default", "b", "10.244.0.2", {}, "node-1"))
    # resourceVersion=0 is served "from the cache": any version, limit ignored.
    st, body = c.json("/api/v1/pods", resourceVersion="0", limit=1)
    assert len(body["items"]) == 2 and "continue" not in body["metadata"]
    # Not older than: the current state.
    st, body = c.json("/api/v1/pods", resourceVersion=rv1)
    assert body["metadata"]["resourceVersion"] == api.resource_version
    # With a limit (or resourceVersionMatch=Exact): the state exactly at that version.
    st, body = c.json("/api/v1/pods", resourceVersion=rv1, limit=10)
    assert body["metadata"]["resourceVersion"] == rv1
    assert [(o["metadata"]["name"], o["metadata"]["labels"]) for o in body["items"]] == [
        ("a", {"v": "1"})]
    st, body = c.json("/api/v1/pods", resourceVersion=rv1, resourceVersionMatch="Exact")
    assert len(body["items"]) == 1
    api.compact()
    st, body = c.json("/api/v1/pods", resourceVersion=rv1, limit=10)
    assert st == 410 and body["reason"] == "Expired"
    api.too_large_wait = 0.2
    st, body = c.json("/api/v1/pods", resourceVersion=str(int(api.resource_version) + 100))
    assert st == 504 and body["reason"] == "Timeout"
    assert body["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
    st, body = c.json("/api/v1/pods", resourceVersionMatch="Exact")
    assert st == 400


def test_label_selectors(api):
    pods = {"dev": {"virtual-env": "dev", "app": "a"},
            "dev1": {"virtual-env": "dev.proj1", "app": "a"},
            "test": {"virtual-env": "test", "app": "b", "tier": "3"},
            "none": {"app": "b", "tier": "10"},
            "bare": None}
    for i, (n, lb) in enumerate(pods.items()):
        api.create(make_pod("default", n, "10.244.0.%d" % (i + 1), lb, "node-1"))

    def names(sel):
        st, body = Client(api).json("/api/v1/pods", labelSelector=sel)
        assert st == 200, body
        return sorted(o["metadata"]["name"] for o in body["items"])

    assert names("virtual-env") == ["dev", "dev1", "test"]
    assert names("!virtual-env") == ["bare", "none"]
    assert names("virtual-env=dev") == ["dev"]
    assert names("virtual-env==dev") == ["dev"]
    assert names("virtual-env!=dev") == ["bare", "dev1", "none", "test"]
    assert names("virtual-env in (dev, dev.proj1)") == ["dev", "dev1"]
    assert names("virtual-env notin (dev)") == ["bare", "dev1", "none", "test"]
    assert names("app=b,virtual-env") == ["test"]
    assert names("app in (a,b),!virtual-env") == ["none"]
    assert names("tier>5") == ["none"] and names("tier<5") == ["test"]
    assert names("") == ["bare", "dev", "dev1", "none", "test"]
    for bad in ("a in (x", "=x", "a b", "a,", "a=b c", "a=in valid!", "-bad-=x"):
        st, body = Client(api).json("/api/v1/pods", labelSelector=bad)
        assert st == 400 and body["reason"] == "BadRequest", bad


def test_field_selectors(api):
    api.create(make_pod("default", "a", "10.244.0.1", {}, "node-1"))
    api.create(make_pod("default", "b", "10.244.0.2", {}, "node-2"))
    api.create(make_pod("other", "c", "10.244.0.3", {}, "node-1"))
    api.create(make_service("default", "s1", "10.96.0.1", [80]))
    api.create(make_service("other", "s2", "10.96.0.2", [80]))

    def names(path, sel, **kw):
        st, body = Client(api).json(path, fieldSelector=sel, **kw)
        assert st == 200, body
        return sorted(o["metadata"]["name"] for o in body["items"])

    assert names("/api/v1/pods", "spec.nodeName=node-1") == ["a", "c"]
    assert names("/api/v1/pods", "spec.nodeName==node-1,metadata.namespace=other") == ["c"]
    assert names("/api/v1/pods", "spec.nodeName!=node-1") == ["b"]
    assert names("/api/v1/pods", "metadata.name=b") == ["b"]
    assert names("/api/v1/pods", "status.podIP=10.244.0.3") == ["c"]
    assert names("/api/v1/pods", "spec.nodeName=node-1", labelSelector="!x") == ["a", "c"]
    assert names("/api/v1/services", "metadata.namespace=other") == ["s2"]
    st, body = Client(api).json("/api/v1/pods", fieldSelector="spec.foo=x")
    assert st == 400 and body["message"] == "field label not supported: spec.foo"
    st, body = Client(api).json("/apis/discovery.k8s.io/v1/endpointslices",
                                fieldSelector="spec.nodeName=node-1")
    assert st == 400
    st, body = Client(api).json("/api/v1/pods", fieldSelector="nonsense")
    assert st == 400


def test_discovery_version_crd_and_forbidden(tmp_path):
    with FakeAPI(virtualenv_crd=False) as api:
        c = Client(api)
        st, body = c.json("/apis/env.alibaba.com/v1alpha2/virtualenvironments")
        assert st == 404 and body["reason"] == "NotFound"
        assert "env.alibaba.com" not in [g["name"] for g in c.json("/apis")[1]["groups"]]
        st, v = c.json("/version")
        assert st == 200 and v["major"] == "1" and v["gitVersion"].startswith("v1.")
        assert c.json("/api")[1]["versions"] == ["v1"]
        res = {r["name"]: r for r in c.json("/api/v1")[1]["resources"]}
        assert res["pods"]["kind"] == "Pod" and "watch" in res["pods"]["verbs"]
        api.set_crd_installed(True)
        api.create(make_virtualenv("default", "ve"))
        assert c.json("/apis/env.alibaba.com/v1alpha2")[1]["resources"][0]["kind"] == \
            "VirtualEnvironment"
        w = c.watch("/apis/env.alibaba.com/v1alpha2/virtualenvironments",
                    resourceVersion=api.resource_version)
        api.wait_for_watches(1, "virtualenvironments")
        api.set_crd_installed(False)      # removal deletes the objects, then the watch ends
        assert w.event()["type"] == "DELETED"
        assert w.next()[0] == "end"
        w.close()
        api.set_crd_installed(True)
        api.forbid("virtualenvironments", ["list"])
        st, body = c.json("/apis/env.alibaba.com/v1alpha2/virtualenvironments")
        assert st == 403 and body["reason"] == "Forbidden"
        assert "cannot list resource \"virtualenvironments\" in API group \"env.alibaba.com\"" \
            in body["message"]
        api.allow("virtualenvironments")
        assert c.json("/apis/env.alibaba.com/v1alpha2/virtualenvironments")[0] == 200
        assert api.errors == []
    with FakeAPI(anonymous=True) as api:
        st, body = Client(api, token=None).json("/api/v1/pods")
        assert st == 403 and "system:anonymous" in body["message"]


def test_events_can_be_created_once_and_forbidden():
    """The one write served: POST of a core/v1 Event (what the agent reports skipped objects
    with). A name that exists is 409; RBAC can say no."""
    def post(c, ns, obj):
        conn = c.conn()
        try:
            conn.request("POST", "/api/v1/namespaces/%s/events" % ns, body=json.dumps(obj),
                         headers=c.headers({"Content-Type": "application/json"}))
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    ev = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "p.envsteer-1", "namespace": "ns1"},
          "involvedObject": {"kind": "Pod", "namespace": "ns1", "name": "p"}, "reason": "X",
          "message": "m", "type": "Warning"}
    with FakeAPI() as api:
        c = Client(api)
        st, body = post(c, "ns1", ev)
        assert st == 201 and body["metadata"]["uid"], body
        st, body = post(c, "ns1", ev)
        assert st == 409 and body["reason"] == "AlreadyExists", body
        assert [e["metadata"]["name"] for e in api.events("ns1")] == ["p.envsteer-1"]
        assert api.events("other") == []
        st, body = post(c, "ns1", {"kind": "Pod"})
        assert st == 400, body
        api.forbid("events", ["create"])
        st, body = post(c, "ns1", dict(ev, metadata={"name": "q", "namespace": "ns1"}))
        assert st == 403 and 'cannot create resource "events"' in body["message"], body
        # other writes stay forbidden
        conn = c.conn()
        conn.request("POST", "/api/v1/namespaces/ns1/pods", body="{}", headers=c.headers())
        assert conn.getresponse().status == 403
        conn.close()


# --------------------------------------------------------------------------- WATCH

@pytest.mark.parametrize("res", list(PATHS))
def test_watch_added_modified_deleted_every_kind(api, res):
    svc, pod, eps, ve = seed(api)
    obj = {"services": svc, "pods": pod, "endpointslices": eps, "virtualenvironments": ve}[res]
    st, lst = Client(api).json(PATHS[res])
    w = Client(api).watch(PATHS[res], resourceVersion=lst["metadata"]["resourceVersion"],
                          allowWatchBookmarks="true")
    assert w.status == 200 and w.headers["Transfer-Encoding"] == "chunked"
    assert w.headers["Content-Type"] == "application/json"
    md = obj["metadata"]
    o2 = json.loads(json.dumps(obj))
    o2["metadata"]["name"] = md["name"] + "-2"
    o2["metadata"]["uid"] = None
    created = api.create(o2)
    ev = w.event()
    assert ev["type"] == "ADDED" and ev["object"] == created
    assert ev["object"]["kind"] == obj["kind"] and ev["object"]["apiVersion"] == obj["apiVersion"]
    mod = api.relabel(res, md["namespace"], md["name"], {"touched": "yes"})
    ev = w.event()
    assert ev["type"] == "MODIFIED" and ev["object"] == mod
    assert int(mod["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    api.delete(res, md["namespace"], md["name"])
    ev = w.event()
    assert ev["type"] == "DELETED"
    assert int(ev["object"]["metadata"]["resourceVersion"]) > int(mod["metadata"]
                                                                   ["resourceVersion"])
    assert ev["object"]["metadata"]["labels"]["touched"] == "yes"   # the last state
    assert ev["object"]["metadata"]["resourceVersion"] == api.resource_version
    w.close()


def test_watch_replay_from_rv_and_initial_state(api):
    rv0 = api.resource_version
    api.create(make_pod("default", "a", "10.244.0.1", {"x": "1"}, "node-1"))
    api.set_pod_ready("default", "a", False)
    api.create(make_pod("default", "b", "10.244.0.2", {}, "node-1"))
    api.delete("pods", "default", "a")
    c = Client(api)
    w = c.watch("/api/v1/pods", resourceVersion=rv0)
    evs = [w.event() for _ in range(4)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [
        ("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in evs]
    assert rvs == sorted(rvs) and rvs[0] == int(rv0) + 1
    ready = {c_["type"]: c_["status"] for c_ in evs[1]["object"]["status"]["conditions"]}
    assert ready["Ready"] == "False"
    w.expect_quiet(0.3)
    w.close()
    # No resourceVersion (or "0"): synthetic ADDED for the current state, then live events.
    w = c.watch("/api/v1/pods")
    ev = w.event()
    assert (ev["type"], ev["object"]["metadata"]["name"]) == ("ADDED", "b")
    api.create(make_pod("default", "c", "10.244.0.3", {}, "node-1"))
    assert w.event()["object"]["metadata"]["name"] == "c"
    w.close()
    # sendInitialEvents: the state, then a BOOKMARK annotated k8s.io/initial-events-end.
    w = c.watch("/api/v1/pods", sendInitialEvents="true", resourceVersionMatch="NotOlderThan",
                resourceVersion="", allowWatchBookmarks="true")
    assert [w.event()["object"]["metadata"]["name"] for _ in range(2)] == ["b", "c"]
    bm = w.event(skip_bookmarks=False)
    assert bm["type"] == "BOOKMARK"
    assert bm["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    w.close()


def test_watch_selectors_and_objects_leaving_them(api):
    api.create(make_pod("default", "p", "10.244.0.1", {"virtual-env": "dev"}, "node-1"))
    api.create(make_pod("default", "q", "10.244.0.2", {"virtual-env": "dev"}, "node-2"))
    rv = api.resource_version
    c = Client(api)
    w = c.watch("/api/v1/pods", resourceVersion=rv, labelSelector="virtual-env in (dev)")
    node = c.watch("/api/v1/pods", resourceVersion=rv, fieldSelector="spec.nodeName=node-1")
    ns = c.watch("/api/v1/namespaces/other/pods", resourceVersion=rv)
    api.wait_for_watches(3, "pods")
    assert {x["labelSelector"] for x in api.active_watches("pods")} == {"virtual-env in (dev)",
                                                                        ""}
    moved = api.relabel("pods", "default", "p", {"virtual-env": "test"})
    ev = w.event()
    # Leaving the selector: DELETED with the previous content at the new resourceVersion.
    assert ev["type"] == "DELETED" and ev["object"]["metadata"]["labels"] == {"virtual-env": "dev"}
    assert ev["object"]["metadata"]["resourceVersion"] == moved["metadata"]["resourceVersion"]
    assert node.event()["type"] == "MODIFIED"
    api.relabel("pods", "default", "q", {"extra": "1"})          # still matching: MODIFIED
    ev = w.event()
    assert (ev["type"], ev["object"]["metadata"]["name"]) == ("MODIFIED", "q")
    back = api.relabel("pods", "default", "p", {"virtual-env": "dev"})
    ev = w.event()
    assert ev["type"] == "ADDED" and ev["object"] == back         # entering: ADDED
    api.create(make_pod("default", "r", "10.244.0.3", {}, "node-1"))   # no env label
    api.create(make_pod("other", "s", "10.244.0.4", {"virtual-env": "dev"}, "node-2"))
    ev = w.event()
    assert ev["object"]["metadata"]["name"] == "s"
    names = [node.event()["object"]["metadata"]["name"] for _ in range(2)]
    assert names == ["p", "r"]
    assert ns.event()["object"]["metadata"]["name"] == "s"
    for x in (w, node, ns):
        x.expect_quiet(0.2)
        x.close()
    st, body = Client(api).json("/api/v1/pods", watch="1", labelSelector="a in (")
    assert st == 400


def test_endpoint_readiness_flip_and_graceful_delete(api):
    svc, pod, eps, ve = seed(api)
    w = Client(api).watch(PATHS["endpointslices"], resourceVersion=api.resource_version)
    api.set_endpoint_ready("default", "web-abcde", "10.244.1.5", False)
    ev = w.event()
    assert ev["type"] == "MODIFIED"
    assert ev["object"]["endpoints"][0]["conditions"] == {"ready": False, "serving": False,
                                                          "terminating": False}
    assert ev["object"]["metadata"]["generation"] == 2
    w.close()
    w = Client(api).watch(PATHS["pods"], resourceVersion=api.resource_version)
    api.begin_delete("pods", "default", "web-1")
    ev = w.event()
    assert ev["type"] == "MODIFIED" and ev["object"]["metadata"]["deletionTimestamp"]
    api.delete("pods", "default", "web-1")
    assert w.event()["type"] == "DELETED"
    # A no-op update changes nothing and sends nothing, like the real server.
    api.update(api.get("services", "default", "web"))
    assert api.get("services", "default", "web")["metadata"]["resourceVersion"] == \
        svc["metadata"]["resourceVersion"]
    w.close()


def test_chunked_framing_one_event_per_chunk_and_clean_end(api):
    api.create(make_pod("default", "a", "10.244.0.1", {}, "node-1"))
    api.create(make_pod("default", "b", "10.244.0.2", {}, "node-1"))
    ctx = ssl.create_default_context(cafile=api.ca_file)
    raw = socket.create_connection((api.host, api.port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname=api.host)
    s.sendall(b"GET /api/v1/pods?watch=true&timeoutSeconds=1 HTTP/1.1\r\nHost: x\r\n"
              b"Authorization: Bearer secret-token\r\n\r\n")
    data = b""
    deadline = time.monotonic() + 5
    while not data.endswith(b"\r\n0\r\n\r\n") and time.monotonic() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
    chunks = []
    while True:
        size, rest = body.split(b"\r\n", 1)
        n = int(size, 16)
        if n == 0:
            assert rest == b"\r\n"
            break
        chunks.append(rest[:n])
        assert rest[n:n + 2] == b"\r\n"
        body = rest[n + 2:]
    assert len(chunks) == 2
    for c in chunks:
        assert c.endswith(b"\n") and c.count(b"\n") == 1
        assert json.loads(c)["type"] == "ADDED"


def test_bookmarks_and_timeout_seconds(api):
    c = Client(api)
    t0 = time.monotonic()
    w = c.watch("/api/v1/pods", resourceVersion=api.resource_version,
                allowWatchBookmarks="true", timeoutSeconds="1")
    ev = w.event(skip_bookmarks=False)
    assert ev["type"] == "BOOKMARK"
    assert ev["object"]["kind"] == "Pod" and ev["object"]["apiVersion"] == "v1"
    assert ev["object"]["metadata"] == {"resourceVersion": api.resource_version,
                                        "creationTimestamp": None}
    api.create(make_pod("default", "a", "10.244.0.1", {}, "node-1"))
    assert w.event()["type"] == "ADDED"
    bm = w.event(skip_bookmarks=False)
    assert bm["type"] == "BOOKMARK" and bm["object"]["metadata"]["resourceVersion"] == \
        api.resource_version
    while True:
        kind, v = w.next(3)
        if kind != "event":
            break
    assert kind == "end" and 0.9 < time.monotonic() - t0 < 2.5
    w.close()
    # Custom resources' bookmarks carry apiVersion/kind too; no bookmarks unless asked.
    w = c.watch(PATHS["virtualenvironments"], resourceVersion=api.resource_version,
                allowWatchBookmarks="1", timeoutSeconds="1")
    ev = w.event(skip_bookmarks=False)
    assert ev["object"] == {"apiVersion": "env.alibaba.com/v1alpha2",
                            "kind": "VirtualEnvironment",
                            "metadata": {"resourceVersion": api.resource_version}}
    w.close()
    # Without allowWatchBookmarks nothing arrives; the connection stays usable after a watch
    # ends on timeoutSeconds (keep-alive).
    conn = c.conn()
    conn.request("GET", "/api/v1/services?watch=1&timeoutSeconds=1&resourceVersion="
                 + api.resource_version, headers=c.headers())
    r = conn.getresponse()
    assert r.read() == b""
    sock = conn.sock
    conn.request("GET", "/api/v1/services", headers=c.headers())
    assert conn.getresponse().status == 200 and conn.sock is sock
    conn.close()


def test_watch_410_after_compaction_and_window_overflow(api):
    rv = api.resource_version
    api.create(make_pod("default", "a", "10.244.0.1", {}, "node-1"))
    api.compact()
    w = Client(api).watch("/api/v1/pods", resourceVersion=rv)
    assert w.status == 200
    ev = w.event()
    assert ev["type"] == "ERROR"
    assert ev["object"] == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure",
                            "message": "too old resource version: %s (%d)"
                                       % (rv, int(api.resource_version) + 1),
                            "reason": "Expired", "code": 410}
    assert w.next()[0] == "end"
    w.close()
    # Watching from the current RV after compaction is fine.
    w = Client(api).watch("/api/v1/pods", resourceVersion=api.resource_version)
    api.create(make_pod("default", "b", "10.244.0.2", {}, "node-1"))
    assert w.event()["type"] == "ADDED"
    w.close()
    with FakeAPI(history_limit=3) as small:
        rv = small.resource_version
        small.create(make_pod("default", "a", "10.244.0.1", {}, "node-1"))
        for i in range(5):
            small.relabel("pods", "default", "a", {"i": str(i)})
        w = Client(small).watch("/api/v1/pods", resourceVersion=rv)
        assert w.event()["object"]["code"] == 410
        w.close()
        assert small.lists() == [] and len(small.watch_requests("pods")) == 1


def test_too_new_resource_version_on_watch(api):
    api.too_large_wait = 0.2
    st, body = Client(api).json("/api/v1/pods", watch="1",
                                resourceVersion=str(int(api.resource_version) + 50))
    assert st == 504 and body["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"


# --------------------------------------------------------------------------- faults

def test_break_streams(api):
    c = Client(api)
    w = c.watch("/api/v1/pods", resourceVersion=api.resource_version)
    w2 = c.watch("/api/v1/services", resourceVersion=api.resource_version)
    api.wait_for_watches(2)
    api.create(make_pod("default", "a", "10.244.0.1", {}, "node-1"))
    ev = w.event()
    api.break_streams()
    kind, err = w.next()
    assert kind == "error", (kind, err)       # no terminating chunk: a broken stream
    assert w2.next()[0] == "error"
    w.close()
    w2.close()
    api.wait_for(lambda: not api.active_watches())
    # Resume from the last RV seen: nothing is lost.
    api.create(make_pod("default", "b", "10.244.0.2", {}, "node-1"))
    w = c.watch("/api/v1/pods", resourceVersion=ev["object"]["metadata"]["resourceVersion"])
    assert w.event()["object"]["metadata"]["name"] == "b"
    api.break_streams(partial=True)           # half an event line, then the connection ends
    kind, err = w.next()
    assert kind == "error"
    w.close()
    w = c.watch("/api/v1/pods", resourceVersion=api.resource_version)
    api.wait_for_watches(1)
    api.break_streams(rst=True)
    assert w.next()[0] == "error"
    w.close()


def test_down_and_up(api):
    api.create(make_pod("default", "a", "10.244.0.1", {}, "node-1"))
    port = api.port
    w = Client(api).watch("/api/v1/pods", resourceVersion=api.resource_version)
    api.wait_for_watches(1)
    api.down()
    assert w.next()[0] == "error"
    w.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((api.host, port), timeout=2)
    api.create(make_pod("default", "b", "10.244.0.2", {}, "node-1"))  # changes while down
    api.up()
    assert api.port == port and api.is_up
    st, body = Client(api).json("/api/v1/pods")
    assert st == 200 and [o["metadata"]["name"] for o in body["items"]] == ["a", "b"]


def test_garbage_and_injected_errors(api):
    c = Client(api)
    api.garbage(2)
    for _ in range(2):
        st, hdr, raw = c.get("/api/v1/pods")
        assert st == 200
        with pytest.raises(ValueError):
            json.loads(raw)
    assert c.json("/api/v1/pods")[0] == 200
    api.garbage(1)
    w = c.watch("/api/v1/pods")
    kind, err = w.next()
    assert kind == "error" and isinstance(err, ValueError)
    w.close()
    api.fail(1, 429)
    st, hdr, raw = c.get("/api/v1/pods")
    assert st == 429 and hdr["Retry-After"] == "1"
    body = json.loads(raw)
    assert body["reason"] == "TooManyRequests" and body["details"] == {"retryAfterSeconds": 1}
    api.fail(2, 500)
    assert [c.get("/api/v1/pods")[0] for _ in range(3)] == [500, 500, 200]


def test_slow_and_stalled(api):
    c = Client(api)
    api.slow(0.4)
    t0 = time.monotonic()
    assert c.get("/api/v1/pods")[0] == 200
    assert time.monotonic() - t0 >= 0.4
    api.slow(0)
    w = c.watch("/api/v1/pods", resourceVersion=api.resource_version,
                allowWatchBookmarks="true")
    api.wait_for_watches(1)
    api.stall_streams()
    api.create(make_pod("default", "a", "10.244.0.1", {}, "node-1"))
    w.expect_quiet(0.5, skip_bookmarks=False)            # not even bookmarks
    api.stall_streams(False)
    assert w.event()["object"]["metadata"]["name"] == "a"
    w.close()


# --------------------------------------------------------------------------- kubeconfig

def _kubectl(args, kc, home):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "KUBECONFIG": kc}
    return subprocess.run([KUBECTL] + args, capture_output=True, text=True, env=env, timeout=20)


def test_kubeconfig_files(api, tmp_path):
    seed(api)
    ca_pem = open(api.ca_file, "rb").read()
    for auth, ca in (("token", "data"), ("client-cert", "data"), ("token-file", "file")):
        kc = api.write_kubeconfig(str(tmp_path / ("kc-" + auth)), auth=auth, ca=ca,
                                  decoy=True, namespace="default")
        text = open(kc).read()
        assert "current-context: fakeapi\n" in text and "\t" not in text
        if not os.path.exists(KUBECTL):
            assert ("certificate-authority-data: " + base64.b64encode(ca_pem).decode()
                    in text) == (ca == "data")
            continue
        r = _kubectl(["config", "view", "--kubeconfig", kc, "-o", "json", "--raw"], kc,
                     tmp_path)
        assert r.returncode == 0, r.stderr
        cfg = json.loads(r.stdout)
        assert cfg["current-context"] == "fakeapi"
        cl = {c["name"]: c["cluster"] for c in cfg["clusters"]}["fakeapi"]
        assert cl["server"] == api.url
        if ca == "data":
            assert base64.b64decode(cl["certificate-authority-data"]) == ca_pem
        else:
            assert cl["certificate-authority"] == api.ca_file
        user = {u["name"]: u["user"] for u in cfg["users"]}["fakeapi-" + auth]
        if auth == "token":
            assert user["token"] == "secret-token"
        elif auth == "client-cert":
            assert base64.b64decode(user["client-key-data"]) == open(api.client_key,
                                                                     "rb").read()
        # A real client against the server: discovery, then a paginated list.
        api.clear_requests()
        r = _kubectl(["--cache-dir", str(tmp_path / "cache"), "get", "pods,services", "-o",
                      "json", "--chunk-size=1", "--request-timeout=5s"], kc, tmp_path)
        assert r.returncode == 0, r.stderr
        items = json.loads(r.stdout)["items"]
        assert sorted(i["kind"] for i in items) == ["Pod", "Service"]
        lists = api.lists("pods")
        assert lists and lists[0].path == "/api/v1/namespaces/default/pods"
        assert lists[0].query["limit"] == "1" and all(q.auth_ok for q in api.requests)
    kc = api.write_kubeconfig(str(tmp_path / "kc.json"), fmt="json")
    assert json.load(open(kc))["users"][0]["user"]["token"] == "secret-token"
    api.rotate_token("new-token")                 # tokenFile follows the rotation
    assert open(str(tmp_path / "kc-token-file.token")).read() == "new-token"


def test_request_log_answers_what_the_client_did(api):
    c = Client(api)
    c.get("/api/v1/pods", labelSelector="virtual-env")
    c.get("/api/v1/pods", fieldSelector="spec.nodeName=node-1")
    w = c.watch("/api/v1/pods", labelSelector="virtual-env",
                resourceVersion=api.resource_version)
    api.wait_for_watches(1, "pods")
    w.close()
    api.wait_for(lambda: not api.active_watches())
    c.get("/api/v1/namespaces/default/pods/x")
    lists = api.lists("pods")
    assert len(lists) == 2
    assert all(q.query.get("labelSelector") or q.query.get("fieldSelector") for q in lists)
    (wr,) = api.watch_requests("pods")
    assert wr.query["labelSelector"] == "virtual-env" and wr.status == 200
    assert [q.verb for q in api.requests] == ["list", "list", "watch", "get"]
    assert api.requests[-1].status == 404 and api.requests[-1].namespace == "default"


def test_ipv6_loopback_and_plain_http():
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
        v6 = True
    except OSError:
        v6 = False
    if v6:
        with FakeAPI(host="::1") as api:
            assert api.url.startswith("https://[::1]:")
            assert Client(api).json("/api/v1/pods")[0] == 200
    with FakeAPI(tls=False) as api:
        assert api.url.startswith("http://127.0.0.1:") and api.ca_file is None
        assert Client(api).json("/api/v1/pods")[0] == 200
    with pytest.raises(ValueError):
        FakeAPI(host="0.0.0.0")
