"""The rbd section of bench.py: nbdsrv's rbd plugin against qemu-nbd's
rbd driver (Debian's qemu-block-extra), both serving one image of the
same throw-away Ceph cluster (tests/integration/ceph_cluster.py) in the
same run, driven by fio's nbd engine over a Unix socket.

Each server runs alone, in an alternating order per round; the image is
written in full first, so reads reach the OSD.  The server's CPU per
request is its utime+stime over the run divided by the requests fio
completed; the cluster's daemons are not counted for either server.
"""
import os
import shutil
import subprocess
import sys
import time

import nbd

import bench as B

sys.path.insert(0, os.path.join(B.REPO, "tests", "integration"))
from ceph_cluster import POOL, CephCluster        # noqa: E402

IMAGE = "bench"
IMAGE_SIZE = 512 * B.MiB      # 128 objects of 4 MiB, all written first
THREADS = 32                  # nbdsrv -t: one worker per QD32 request
MIN_RUNTIME = 3.0             # seconds: a cluster needs longer to settle

CASES = [
    B.fio_case("rbd-4k-randread-qd32", "4k randread QD32", "unix",
               "randread", "4k", 32, 1),
    B.fio_case("rbd-4k-randwrite-qd32", "4k randwrite QD32", "unix",
               "randwrite", "4k", 32, 1),
    B.fio_case("rbd-1m-read-qd8", "1M seq read QD8", "unix",
               "read", "1M", 8, 1),
    B.fio_case("rbd-1m-write-qd8", "1M seq write QD8", "unix",
               "write", "1M", 8, 1),
]

# key, short name, argv builder (cluster, socket)
SERVERS = [
    ("nbdsrv-rbd", "srv-rbd",
     lambda ctx, c, sock: [ctx.nbdsrv, "-f", "--exit-with-parent",
                           "-t", str(THREADS), "-U", sock, "rbd",
                           "conf=" + c.conf, "image=" + IMAGE]),
    ("qemu-nbd-rbd", "qemu-rbd",
     lambda ctx, c, sock: ["qemu-nbd", "-t", "-e", "64", "-f", "raw",
                           "--cache=writeback", "-k", sock,
                           "rbd:%s/%s:conf=%s" % (POOL, IMAGE, c.conf)]),
]


def unavailable():
    """Why the rbd section cannot run here, or None."""
    for tool in ("ceph-mon", "ceph-osd", "ceph-mgr", "rbd", "qemu-nbd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: run `make test-deps`"
    return None


def wait_ready(proc, uri, log):
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("exited at start: " + open(log).read()[-300:])
        try:
            h = nbd.NBD()
            h.connect_uri(uri)
            size = h.get_size()
            h.shutdown()
            if size != IMAGE_SIZE:
                raise RuntimeError(f"export is {size} bytes")
            return
        except nbd.Error:
            if time.monotonic() > deadline:
                raise RuntimeError("no handshake within 60 s: "
                                   + open(log).read()[-300:])
            time.sleep(0.1)


def run_server(ctx, cluster, key, build, rnd, runs, errors):
    sock = os.path.join(ctx.tmpdir, key + ".sock")
    log = os.path.join(ctx.tmpdir, key + ".log")
    argv = build(ctx, cluster, sock)
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        uri = "nbd+unix:///?socket=" + sock
        wait_ready(proc, uri, log)
        for case in CASES:
            before = B.proc_ticks(proc.pid)
            try:
                res = B.run_fio(ctx, uri, case.key, case.fio,
                                runtime=max(ctx.runtime, MIN_RUNTIME))
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                errors.append(f"{key} round {rnd} {case.key}: {e}")
                B.log(ctx, f"{key} {case.key}: FAILED: {e}")
                continue
            ticks = B.proc_ticks(proc.pid) - before
            res["cpu_us_per_req"] = ticks / B.CLK_TCK * 1e6 / res["requests"]
            res["value"] = res["iops"] if case.metric == "IOPS" \
                else res["mib_s"]
            res["round"] = rnd
            runs.setdefault(key, {}).setdefault(case.key, []).append(res)
            B.log(ctx, f"{key:14} {case.key:22} {B.fmt(res['value']):>8} "
                       f"{case.metric:6} {res['cpu_us_per_req']:8.1f} "
                       f"us CPU/req")
    finally:
        B.stop_pid(proc.pid)
        try:
            proc.wait(timeout=B.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        if os.path.exists(sock):
            os.unlink(sock)


def summarise(runs):
    return {key: {case.key: {
        "value": B.median(r["value"] for r in runs.get(key, {})
                          .get(case.key, [])),
        "cpu_us_per_req": B.median(r["cpu_us_per_req"]
                                   for r in runs.get(key, {})
                                   .get(case.key, []))}
        for case in CASES} for key, _, _ in SERVERS}


def table(summary):
    rows = [["rbd case", "metric", "srv-rbd", "qemu-rbd", "srv/qemu"]]
    for case in CASES:
        a = summary["nbdsrv-rbd"][case.key]
        b = summary["qemu-nbd-rbd"][case.key]
        rows.append([case.label, case.metric, B.fmt(a["value"]),
                     B.fmt(b["value"]),
                     B.fmt(B.ratio(a["value"], b["value"]), "ratio")])
        rows.append(["", "CPU us/req", B.fmt(a["cpu_us_per_req"]),
                     B.fmt(b["cpu_us_per_req"]),
                     B.fmt(B.ratio(a["cpu_us_per_req"],
                                   b["cpu_us_per_req"]), "ratio")])
    return rows


def targets(summary):
    """Issue 12: IOPS >= 1.2x qemu-nbd, CPU per request <= 0.7x."""
    out = []
    for case in CASES:
        a = summary["nbdsrv-rbd"][case.key]
        b = summary["qemu-nbd-rbd"][case.key]
        for field, goal, lower in (("value", 1.2, False),
                                   ("cpu_us_per_req", 0.7, True)):
            measured = B.ratio(a[field], b[field])
            met = None if measured is None else \
                (measured <= goal if lower else measured >= goal)
            name = "CPU/req" if lower else case.metric
            out.append({"target": f"rbd {name} {case.key} srv/qemu",
                        "measured": measured, "goal": goal, "met": met,
                        "goal_text": ("<= " if lower else ">= ")
                        + f"{goal:g}"})
    return out


def run(ctx):
    """Start a cluster, measure both servers, stop it; returns the
    section's results for the report and the JSON."""
    runs, errors = {}, []
    B.log(ctx, "rbd: starting a one-node Ceph cluster")
    cluster = CephCluster(device_bytes=3 << 30)
    try:
        cluster.start()
        cluster.rbd("create", "--size", str(IMAGE_SIZE // B.MiB) + "M",
                    "%s/%s" % (POOL, IMAGE))
        cluster.rbd("bench", "--io-type", "write", "--io-pattern", "seq",
                    "--io-size", "4M", "--io-total", str(IMAGE_SIZE),
                    "%s/%s" % (POOL, IMAGE), timeout=300)
        B.log(ctx, "rbd: cluster up, image written")
        for rnd in range(ctx.repeats):
            order = SERVERS if rnd % 2 == 0 else SERVERS[::-1]
            for key, _, build in order:
                run_server(ctx, cluster, key, build, rnd, runs, errors)
    finally:
        cluster.stop()
    summary = summarise(runs)
    return {"runs": runs, "errors": errors, "summary": summary,
            "table": table(summary), "targets": targets(summary)}
