#!/usr/bin/env python3
"""Summary of a kernel-matrix run (scripts/kernel-matrix.sh): feature table and test results.

Reads the result directory the guest wrote (features.json from probe.py, junit.xml and
*.rc from pytest) and, when given, the host's own probe for comparison. Prints a
kernel/feature/state/reason table and the per-test results; --markdown also writes them
as a markdown report. Exit status 0 only when the probe and pytest both succeeded.
"""
import argparse
import datetime
import json
import os
import sys
import xml.etree.ElementTree as ET

# (key in the agent's /v1/status "kernel", label, word that finds its note)
FEATURES = [
    ("set_retval", "bpf_set_retval in cgroup programs (ECONNREFUSED)", "set_retval"),
    ("recv_tracepoint", "tp_btf/sock_recv_length (6.3+)", "sock_recv_length"),
    ("bpf_loop", "bpf_loop helper (5.17+)", "bpf_loop"),
    ("task_storage", "task storage maps (5.11+)", "task storage"),
]
REQUEST_CTX = "request context (HTTP header env per thread)"


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def feature_rows(feat):
    """[(feature, state, reason)] from a probe.py result."""
    if feat is None:
        return [("agent", "unknown", "no probe result (the guest did not get that far)")]
    if feat.get("error"):
        return [("agent", "FAILED", feat["error"])]
    k = feat.get("kernel") or {}
    notes = k.get("notes") or []
    rows = []
    for key, label, word in FEATURES:
        if k.get(key):
            rows.append((label, "active", ""))
        else:
            note = next((n for n in notes if word in n), "the agent's probe says absent")
            rows.append((label, "degraded", note))
    missing = [label.split(" ")[0] for key, label, _ in FEATURES[1:] if not k.get(key)]
    if feat.get("request_context"):
        rows.append((REQUEST_CTX, "active", ""))
    else:
        rows.append((REQUEST_CTX, "degraded",
                     "needs " + ", ".join(missing) if missing else "off (--no-header-context?)"))
    progs = sorted({l["program"] for l in feat.get("links") or []})
    rows.append(("programs attached", str(len(progs)), " ".join(progs)))
    st = feat.get("steered")
    if isinstance(st, dict) and "error" not in st:
        rows.append(("steered connect (probe)", "ok", "answered by %s" % st["answer"]["pod"]))
    else:
        rows.append(("steered connect (probe)", "FAILED", str((st or {}).get("error", st))[:200]))
    if feat.get("agent_start_seconds") is not None:
        rows.append(("agent start to ready", "%.1f s" % feat["agent_start_seconds"], ""))
    return rows


def test_results(junit):
    """[(test id, outcome, detail, seconds)] from a junit.xml."""
    out = []
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return None
    for tc in root.iter("testcase"):
        cls = tc.get("classname", "")
        tid = "%s::%s" % (cls.rsplit(".", 1)[-1] + ".py" if cls else "?", tc.get("name"))
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            e = tc.find(tag)
            if e is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                detail = (e.get("message") or e.text or "").strip().splitlines()
                detail = detail[0][:240] if detail else ""
                break
        out.append((tid, outcome, detail, float(tc.get("time") or 0)))
    return out


def table(rows, header):
    w = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    w[-1] = 0  # last column unpadded
    fmt = "  ".join("%%-%ds" % x if x else "%s" for x in w)
    lines = [fmt % header, fmt % tuple("-" * max(len(h), 3) for h in header)]
    lines += [fmt % tuple(r) for r in rows]
    return "\n".join(lines)


def md_table(rows, header):
    esc = [tuple(str(c).replace("|", "\\|") for c in r) for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the guest's result directory")
    ap.add_argument("--host", help="features.json of the host's own probe")
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--package", default="")
    ap.add_argument("--elapsed", type=int, default=0)
    ap.add_argument("--smp", default="")
    ap.add_argument("--mem", default="")
    ap.add_argument("--probe-only", action="store_true")
    ap.add_argument("--markdown", help="also write the report here")
    ap.add_argument("--deselected", default="", help="note on tests not run")
    a = ap.parse_args()

    guest = load_json(os.path.join(a.out, "features.json"))
    host = load_json(a.host) if a.host else None
    rows = []
    if host is not None:
        hk = ((host.get("kernel") or {}).get("release")) or os.uname().release
        rows += [(hk + " (host)",) + r for r in feature_rows(host)]
    rows += [(a.kernel,) + r for r in feature_rows(guest)]
    header = ("kernel", "feature", "state", "reason")

    ver = load_json(os.path.join(a.out, "verifier.json"))
    if ver:
        bad = [v for v in ver if v["state"] != "verified"]
        rows.append((a.kernel, "verifier, each program alone (object defaults)",
                     "%d/%d verified" % (len(ver) - len(bad), len(ver)),
                     "; ".join("%s: %s" % (v["program"], v["state"]) for v in bad)))
        for v in bad:
            if v["state"] == "rejected":
                # the verifier's own verdict: the last line before its statistics
                lines = [l.strip() for l in v.get("log", "").splitlines()
                         if l.strip() and not l.startswith(("libbpf:", "--", "processed", "; "))]
                rows.append((a.kernel, "  " + v["program"], "rejected",
                             (lines[-1] if lines else "see verifier.json")[:300]))
    probe_rc = read(os.path.join(a.out, "probe.rc"))
    pytest_rc = read(os.path.join(a.out, "pytest.rc"))
    results = None if a.probe_only else test_results(os.path.join(a.out, "junit.xml"))
    counts = {}
    for r in results or []:
        counts[r[1]] = counts.get(r[1], 0) + 1

    problems = []
    if probe_rc != "0":
        problems.append("probe failed (rc %s)" % probe_rc if probe_rc else
                        "the guest wrote no probe result (see the console log)")
    if not a.probe_only:
        if pytest_rc is None:
            problems.append("the guest wrote no pytest result (killed or crashed; see console log)")
        elif pytest_rc != "0":
            problems.append("pytest exit %s" % pytest_rc)
        if results is not None and not results:
            problems.append("no test ran")

    guest_s = read(os.path.join(a.out, "guest_seconds"))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = ("kernel matrix %s: %s (%s), qemu TCG -smp %s -m %s, guest %ss of %ss wall"
            % (now, a.kernel, a.package, a.smp, a.mem, guest_s or "?", a.elapsed))
    print()
    print(head)
    print()
    print(table(rows, header))
    if results is not None:
        print()
        trows = [(t, o, "%.1f" % s, d) for t, o, d, s in results]
        print(table(trows, ("test", "result", "s", "detail")) if trows else "(no tests)")
        print()
        print("%d passed, %d failed, %d skipped" % (
            counts.get("passed", 0), counts.get("FAILED", 0) + counts.get("ERROR", 0),
            counts.get("skipped", 0)))
        if a.deselected:
            print("deselected: " + a.deselected)
    print("kernel matrix: " + ("OK" if not problems else "FAILED: " + "; ".join(problems)))

    if a.markdown:
        md = ["## Kernel matrix report", "", head, "", md_table(rows, header), ""]
        if results is not None:
            md += [md_table([(t, o, "%.1f" % s, d) for t, o, d, s in results],
                            ("test", "result", "s", "detail")), "",
                   "%d passed, %d failed/error, %d skipped" % (
                       counts.get("passed", 0), counts.get("FAILED", 0) + counts.get("ERROR", 0),
                       counts.get("skipped", 0)), ""]
            if a.deselected:
                md += ["Deselected: " + a.deselected, ""]
        md.append("Result: " + ("OK" if not problems else "FAILED: " + "; ".join(problems)))
        with open(a.markdown, "w") as f:
            f.write("\n".join(md) + "\n")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
