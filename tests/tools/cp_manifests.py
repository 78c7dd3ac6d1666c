#!/usr/bin/env python3
"""Writes the control-plane bench's cluster as manifests into OUT_DIR (one JSON `kind: List`
file per namespace): 10 000 services, 10 pods each (100 000), pod k in env dev.e<k mod 1000>,
64 pods annotated with a cgroup (not created here). The same shapes as bench/bench.py's
control suite, for tests/tools/cp_profile.cpp:

    tests/tools/cp_manifests.py /tmp/cp && build/tests/envsteer_cp_profile /tmp/cp 20
"""
import json
import os
import sys


def scale_addr(base, i):
    return "127.%d.%d.%d" % (base + (i >> 16), (i >> 8) & 255, i & 255)


def service(ns, name, ip):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "uid": "svc-%s-%s" % (ns, name)},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                     "selector": {"app": name}}}


def pod(ns, name, ip, labels, cgroup=None):
    meta = {"name": name, "namespace": ns, "uid": "pod-%s-%s" % (ns, name), "labels": labels}
    if cgroup:
        meta["annotations"] = {"envsteer.io/cgroup": cgroup}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": "x" if cgroup else "other", "containers": [{"name": "app", "ports": [
                {"containerPort": 8080, "name": "http", "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    n_svc, per_svc, n_env, n_ns, local_left = 10000, 10, 1000, 100, 64
    files, ix = {}, 0
    for i in range(n_svc):
        ns = "ns-%d" % (i % n_ns)
        objs = files.setdefault(ns, [])
        objs.append(service(ns, "svc-%d" % i, scale_addr(130, i)))
        for k in range(per_svc):
            cg = None
            if local_left and k == 0:
                local_left -= 1
                cg = "cproot/pod-%d" % i
            objs.append(pod(ns, "pod-%d-%d" % (i, k), scale_addr(140, ix),
                            {"app": "svc-%d" % i, "virtual-env": "dev.e%d" % (ix % n_env)}, cg))
            ix += 1
    for ns, objs in files.items():
        with open(os.path.join(out, ns + ".json"), "w") as f:
            json.dump({"apiVersion": "v1", "kind": "List", "items": objs}, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
