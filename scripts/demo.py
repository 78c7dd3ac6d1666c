#!/usr/bin/env python3
"""envsteer demo: one node on this machine, three services, variants in three environments.

As on a real node (tests/e2e/topology.py): the node is a network namespace with a bridge, and
the agent runs there on a private cgroup subtree and pin directory; each pod has a network
namespace of its own (a veth into the bridge, 198.18.1.x and fd00:18:1::x) and its processes
in its own cgroup v2 directory; services are 198.19.0.x (configured nowhere: only steering
reaches them). The demo shows from pods of each environment which variant answers each call,
and what `envsteer explain` says. Removes everything it made on exit (also on Ctrl-C or
error). Exits non-zero when any answer differs from what the routing rule demands.

  sudo scripts/demo.py [--bin build/envsteer] [--loopback]     (or ENVSTEER_BIN=...)

--loopback: the older, quicker shape: every pod a process in its own cgroup on a loopback
address of this machine's namespace (127.1.10.x; services 127.96.10.x).
Traffic stays inside the namespaces the demo makes (or on 127.0.0.0/8 with --loopback);
every request is bounded by a timeout.
"""
import argparse
import os
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
import harness  # noqa: E402
import topology  # noqa: E402

NS = "shop"
PORT, TARGET_PORT = 80, 8080
SERVICES = {"frontend": "127.96.10.1", "cart": "127.96.10.2", "payment": "127.96.10.3"}
# (service, environment, pod ip): the variants deployed
VARIANTS = [
    ("frontend", "dev", "127.1.10.1"), ("frontend", "dev.alice", "127.1.10.2"),
    ("cart", "dev", "127.1.10.11"), ("cart", "dev.alice", "127.1.10.12"),
    ("cart", "dev.bob", "127.1.10.13"),
    ("payment", "dev", "127.1.10.21"), ("payment", "dev.bob", "127.1.10.22"),
]
# (client pod, environment label or None, ip)
CLIENTS = [
    ("client-dev", "dev", "127.1.10.101"),
    ("client-alice", "dev.alice", "127.1.10.102"),
    ("client-bob", "dev.bob", "127.1.10.103"),
    ("client-alice-exp", "dev.alice.exp1", "127.1.10.104"),
    ("client-unlabelled", None, "127.1.10.105"),
]


def pod_name(svc, env):
    return "%s-%s" % (svc, env.replace(".", "-"))


def table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def short(podkey):
    return podkey.split("/", 1)[1] if podkey else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=None, help="envsteer binary (default: $ENVSTEER_BIN or "
                                                "build/envsteer)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the agent/pod logs")
    ap.add_argument("--loopback", action="store_true",
                    help="pods as processes on loopback addresses of this namespace (quicker; "
                         "no namespace per pod)")
    args = ap.parse_args()
    if args.bin:
        os.environ["ENVSTEER_BIN"] = os.path.abspath(args.bin)
    if args.keep_logs:
        os.environ["ENVSTEER_E2E_KEEP_LOGS"] = "1"
    if os.geteuid() != 0:
        print("demo: must run as root (cgroups, bpffs, BPF programs)", file=sys.stderr)
        return 2
    binary = harness.agent_bin()
    if not os.access(binary, os.X_OK):
        print("demo: envsteer binary not found at %s (build it, or pass --bin)" % binary,
              file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_term)
    node = topo = None
    wrong = 0
    status = 0
    try:
        if args.loopback:
            node = harness.Node("demo", default_env="dev")
            for svc, ip in SERVICES.items():
                node.add_service(NS, svc, ip, PORT, TARGET_PORT)
        else:
            topo = topology.Topology("demo", nodes=1, default_env="dev")
            node = topo.node(1)
            for i, svc in enumerate(SERVICES, 1):
                topo.add_service(NS, svc, i, PORT, TARGET_PORT, protocols=("TCP",))
                SERVICES[svc] = topology.SVC_V4 % i

        def add_pod(name, ip, **kw):
            if args.loopback:
                return node.add_pod(NS, name, ip, port=TARGET_PORT, **kw)
            return topo.add_pod(1, NS, name, **kw)

        # the services' pods are thread-per-request servers: they opt into the thread context
        ips = {}
        for svc, env, ip in VARIANTS:
            ips[pod_name(svc, env)] = add_pod(pod_name(svc, env), ip, app=svc, env=env,
                                              annotations={"envsteer.io/thread-context": "on"}).ip
        for name, env, ip in CLIENTS:
            ips[name] = add_pod(name, ip, app="client", env=env).ip
        node.write_manifests()

        print("envsteer demo: one node on this machine (binary %s)" % binary)
        if not args.loopback:
            print("  node            network namespace %s (bridge br0 %s), the agent runs there"
                  % (node.host.name, topology.GW_V4 % 1))
            print("  pods            a network namespace each (%s-p<N>), a veth into br0, "
                  "198.18.1.N and fd00:18:1::N" % node.host.name[:-len("-host")])
        print("  cgroup subtree  %s" % node.cgroup_dir)
        print("  pin directory   %s" % node.pin_dir)
        print("  manifests       %s" % node.manifest_dir)
        print()
        print(table(["service", "address", "variants (pod @ ip, environment)"],
                    [[s, "%s:%d" % (ip, PORT),
                      ", ".join("%s @ %s (%s)" % (pod_name(s2, e), ips[pod_name(s2, e)], e)
                                for s2, e, _ in VARIANTS if s2 == s)]
                     for s, ip in SERVICES.items()]))
        print()
        for svc, env, _ in VARIANTS:
            node.start_server("%s/%s" % (NS, pod_name(svc, env)))
        node.start_agent()
        print("agent ready (admin socket %s); --default-env dev\n" % node.admin_socket)

        # 1. direct calls: each client pod calls each service
        rows = []
        for name, env, _ in CLIENTS:
            caller = "%s/%s" % (NS, name)
            row = [name, env or "(none) -> dev"]
            for svc, vip in SERVICES.items():
                outcome, level, pods = node.expected("%s/%s" % (NS, svc), node.pod_env(caller))
                r = node.request(caller, vip, PORT, timeout=3)
                got = r["answer"]["pod"] if r.get("ok") else r.get("errno", "error")
                ok = (got in pods) if pods else (got == "ECONNREFUSED")
                wrong += not ok
                row.append("%s%s" % (short(got) if r.get("ok") else got,
                                     "" if ok else "  <-- WRONG, want %s" % pods))
            rows.append(row)
        print("Direct calls: which variant answers a client of each environment")
        print(table(["client pod", "environment"] + list(SERVICES), rows))
        print()

        # 2. a chain frontend -> cart -> payment: the client's env travels with the request
        rows = []
        targets = ["%s:%d" % (SERVICES[s], PORT) for s in ("frontend", "cart", "payment")]
        for name, env, _ in CLIENTS:
            caller = "%s/%s" % (NS, name)
            res = node.call_chain(caller, targets)
            hops = harness.chain_hops(res)
            cells = []
            for i, svc in enumerate(("frontend", "cart", "payment")):
                _, _, pods = node.expected("%s/%s" % (NS, svc), node.pod_env(caller))
                h = hops[i] if i < len(hops) else {"pod": None, "errno": "no answer"}
                got = h.get("pod")
                ok = got in pods
                wrong += not ok
                cells.append("%s%s" % (short(got) if got else h.get("errno"),
                                       "" if ok else "  <-- WRONG, want %s" % pods))
            rows.append([name] + cells)
        print("A chain client -> frontend -> cart -> payment (no application sends or forwards "
              "a header)")
        print(table(["client pod", "frontend", "cart", "payment"], rows))
        print("(a labelled client's requests carry its environment (auto-inject); the service "
              "pods are\n thread-per-request, annotated envsteer.io/thread-context: \"on\", so "
              "each hop carries on\n the environment of the request it serves. An unlabelled "
              "client inserts nothing: dev.)")
        print()

        # 2b. tagged requests entering at frontend's dev pod (as from an ingress); no pod
        # forwards the header: the kernel carries the request's environment across hops
        rows = []
        entry = ips["frontend-dev"]
        path = "/call?to=%s:%d&to=%s:%d" % (SERVICES["cart"], PORT, SERVICES["payment"], PORT)
        for tag in ("dev", "dev.alice", "dev.bob", "dev.bob.feature-x", None):
            req = harness.http_request(path, headers=[("X-Virtual-Env", tag)] if tag else [],
                                       keepalive=False)
            # from the node (in no pod) straight to the pod, as an ingress would
            if args.loopback:  # this process: in no cgroup of the node
                res = node.session(None, entry, [{"pieces": [req]}], port=TARGET_PORT)
            else:
                res = node.host_session(harness.addr(entry, TARGET_PORT), [{"pieces": [req]}])
            answer = res["exchanges"][0]["responses"][0]["answer"] if res.get("ok") else {}
            cells, hop = [], answer
            for svc in ("cart", "payment"):
                hop = (hop or {}).get("next") or {}
                _, _, pods = node.expected("%s/%s" % (NS, svc), tag or "dev")
                got = hop.get("pod")
                ok = got in pods
                wrong += not ok
                cells.append("%s%s" % (short(got), "" if ok else "  <-- WRONG, want %s" % pods))
            rows.append([tag or "(no header)", short(answer.get("pod"))] + cells)
        print("Requests tagged X-Virtual-Env enter at frontend-dev (%s, sent from the node); no "
              "application\nforwards the header" % entry)
        print(table(["X-Virtual-Env", "frontend", "cart", "payment"], rows))
        print("(the kernel learns the env from the request, the handling thread's calls are "
              "steered by it,\n and the header is inserted into the outgoing request for the "
              "next hop)")
        print()

        # 3. what the kernel will do, read back from the live maps
        cmd = [binary, "explain", "--from", NS + "/client-alice-exp", "--to",
               NS + "/cart:80", "--admin-socket", node.admin_socket]
        print("$ envsteer explain --from %s/client-alice-exp --to %s/cart:80" % (NS, NS))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        sys.stdout.write(r.stdout)
        if r.returncode != 0:
            sys.stdout.write(r.stderr)
            wrong += 1
        print()
        if wrong:
            print("demo: %d answer(s) WRONG" % wrong)
        else:
            print("demo: every answer is the variant the routing rule demands")
    except KeyboardInterrupt:
        print("\ndemo: interrupted, cleaning up", file=sys.stderr)
        status = 130
    except Exception as e:  # noqa: BLE001
        print("demo: error: %s" % e, file=sys.stderr)
        if node is not None:
            sys.stderr.write(node.logs(4000) + "\n")
        status = 1
    finally:
        if node is not None:
            (topo or node).close()
            if node.cleanup_problems:
                print("demo: cleanup problems: %s" % node.cleanup_problems, file=sys.stderr)
                status = status or 1
            else:
                print("demo: cleaned up (agent stopped, programs detached, pins, cgroups, %s"
                      "processes removed)" % ("" if args.loopback else "network namespaces, "))
    return status or (1 if wrong else 0)


if __name__ == "__main__":
    sys.exit(main())
