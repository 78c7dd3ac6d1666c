#!/usr/bin/env python3
"""Loads each program of the envsteer BPF object on its own, with libbpf (ctypes), and
records whether this kernel's verifier accepts it, with the verifier log when not.

The agent loads only what the kernel's features allow (without the request context it
never loads the header programs), so its start-up says nothing about whether those
programs would verify here. This does, program by program, with the object's defaults
(request context on). tp_btf programs whose attach point is missing are reported as
such without loading. Maps are not pinned. Used by scripts/kernel-matrix.sh in the guest:
    python3 scripts/kmatrix/verifier_check.py --obj build/gen/envsteer.bpf.o --out v.json
"""
import argparse
import ctypes
import ctypes.util
import json
import os
import sys
import tempfile

lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
P = ctypes.c_void_p
for name, res, args in [
        ("bpf_object__open_file", P, [ctypes.c_char_p, P]),
        ("bpf_object__next_program", P, [P, P]),
        ("bpf_object__next_map", P, [P, P]),
        ("bpf_object__load", ctypes.c_int, [P]),
        ("bpf_object__close", None, [P]),
        ("bpf_program__name", ctypes.c_char_p, [P]),
        ("bpf_program__section_name", ctypes.c_char_p, [P]),
        ("bpf_program__set_autoload", ctypes.c_int, [P, ctypes.c_bool]),
        ("bpf_program__set_log_level", ctypes.c_int, [P, ctypes.c_uint32]),
        ("bpf_map__set_pin_path", ctypes.c_int, [P, ctypes.c_char_p]),
        ("libbpf_get_error", ctypes.c_long, [P])]:
    f = getattr(lib, name)
    f.restype, f.argtypes = res, args


def each(next_fn, obj):
    cur = None
    while True:
        cur = next_fn(obj, cur)
        if not cur:
            return
        yield cur


def programs(path):
    obj = lib.bpf_object__open_file(path.encode(), None)
    if not obj:
        raise OSError(ctypes.get_errno(), "bpf_object__open_file %s" % path)
    try:
        return [(lib.bpf_program__name(p).decode(), lib.bpf_program__section_name(p).decode())
                for p in each(lib.bpf_object__next_program, obj)]
    finally:
        lib.bpf_object__close(obj)


def load_one(path, only):
    """(ok, errno) loading only program `only`; libbpf's log goes to our stderr (fd 2)."""
    obj = lib.bpf_object__open_file(path.encode(), None)
    if not obj:
        return False, ctypes.get_errno()
    try:
        for m in each(lib.bpf_object__next_map, obj):
            lib.bpf_map__set_pin_path(m, None)
        for p in each(lib.bpf_object__next_program, obj):
            lib.bpf_program__set_autoload(p, lib.bpf_program__name(p).decode() == only)
        err = lib.bpf_object__load(obj)
        return err == 0, -err
    finally:
        lib.bpf_object__close(obj)


def with_stderr_captured(fn, *args):
    """Runs fn with fd 2 redirected to a temp file (libbpf prints there); (result, text)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            res = fn(*args)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return res, tmp.read().decode("utf-8", "replace")


def btf_has(name):
    """Whether vmlinux BTF has btf_trace_<name> (a tp_btf attach point)."""
    try:
        with open("/sys/kernel/btf/vmlinux", "rb") as f:
            return ("btf_trace_" + name).encode() in f.read()
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--obj", required=True, help="the BPF object (build/gen/envsteer.bpf.o)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    a = ap.parse_args()
    res = []
    for name, sec in programs(a.obj):
        row = {"program": name, "section": sec}
        if sec.startswith("tp_btf/") and not btf_has(sec.split("/", 1)[1]):
            row.update(state="no attach point", log="vmlinux BTF has no btf_trace_%s"
                       % sec.split("/", 1)[1])
        else:
            (ok, err), log = with_stderr_captured(load_one, a.obj, name)
            row.update(state="verified" if ok else "rejected", errno=err,
                       log="" if ok else log[-6000:])
        res.append(row)
        print("verifier: %-24s %-22s %s" % (name, sec, row["state"]), flush=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
