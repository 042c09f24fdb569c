#!/usr/bin/env python3
"""Interleaved A/B of `walmgr xarchive` of one uncompressed 16 MiB segment into a local
store, beside `dd bs=1M conv=fsync` of the same file (the floor bench/walmgr.sh uses).

Usage: bench/walmgr-push-ab.py A_WALMGR B_WALMGR [N=60] [DIR=/var/tmp]

Each of N rounds runs dd, A and B once each, rotating their order, into a fresh store
under DIR (on the disk being measured; not tmpfs); the segment is random bytes with
check_wal_header = no. Prints the median, quartiles and ratio to dd per side. For
comparing two builds (say the last commit's and the working tree's) on this noisy
machine, where separate runs of bench/walmgr.sh differ by more than the change.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

if len(sys.argv) < 3:
    sys.exit(__doc__.strip().splitlines()[2])
sides = {"dd": None, "A": sys.argv[1], "B": sys.argv[2]}
n = int(sys.argv[3]) if len(sys.argv) > 3 else 60
root = tempfile.mkdtemp(prefix="walmgr-push-ab.", dir=sys.argv[4] if len(sys.argv) > 4 else "/var/tmp")
try:
    name = "000000010000000000000001"
    seg = os.path.join(root, name)
    with open(seg, "wb") as f:
        f.write(os.urandom(16 << 20))
    store = os.path.join(root, "store")
    complete = os.path.join(store, "logs.complete")
    os.makedirs(os.path.join(root, "data"))
    ini = os.path.join(root, "master.ini")
    with open(ini, "w") as f:
        f.write(f"[wal-master]\njob_name = ab\nlogfile = {root}/log\n"
                f"master_data = {root}/data\nslave = {store}\n"
                "check_wal_header = no\ncompression = none\n")

    def run(side):
        shutil.rmtree(store, ignore_errors=True)
        os.makedirs(complete)
        os.makedirs(os.path.join(store, "logs.partial"))
        if side == "dd":
            cmd = ["dd", f"if={seg}", f"of={complete}/{name}", "bs=1M", "conv=fsync", "status=none"]
        else:
            cmd = [sides[side], ini, "xarchive", seg, name]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        return (time.perf_counter() - t) * 1000

    keys = list(sides)
    got = {k: [] for k in keys}
    for i in range(n):
        for k in keys[i % 3:] + keys[:i % 3]:
            got[k].append(run(k))
    dd = statistics.median(got["dd"])
    for k in keys:
        v = sorted(got[k])
        m = statistics.median(v)
        label = k if k == "dd" else f"{k} ({sides[k]})"
        print(f"{label}: median {m:.1f} ms, quartiles {v[n // 4]:.1f}-{v[3 * n // 4]:.1f}, {m / dd:.2f}x dd")
finally:
    shutil.rmtree(root, ignore_errors=True)
