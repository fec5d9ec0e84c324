#!/usr/bin/python3
"""Ten thousand idle clients: nbdsrv beside nbdkit and qemu-nbd (issue 11).

Run with Debian's /usr/bin/python3 (`make bench` runs it after bench.py):

    /usr/bin/python3 bench/idle_clients.py [--clients N] [--nbdsrv PATH]

For each server in turn, on a Unix socket in a private directory, with
a 1 GiB disk (memory plugin; qemu-nbd a sparse raw file in /dev/shm):

1. fio 4k randread QD8 on one connection, alone (--fio-runs runs of
   --fio-seconds each);
2. N raw clients (bench/idle_clients.c) that finish NBD_OPT_GO and sit
   idle: how many the server holds, how fast they connect, its thread
   count and RSS per idle client once they are in;
3. the same fio runs with them connected;
4. all of them close: threads and RSS 1 s later; fio alone again, as
   many runs.  "With them" is the mean of its runs and "alone" that of
   the runs before and after.  One fio run here strays 8 to 13% from
   the mean (standard deviation) however long it runs, 1, 3 or 6 s
   alike, so the ratio rests on many short runs: with 12 and 24 of
   them its standard error is about 4%;
5. 1,000 clients that connect and send nothing, then one new client:
   the time from connect to the answer of its first READ.

Everything is bounded in time and count; the servers are stopped by
PID.  The table gives each peer's figure and nbdsrv's ratio to it.
nbdkit is offered fewer clients (see nbdkit_cap): with a thread per
request slot it would take every process ID of the machine.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from bench import proc_status_number   # a number from /proc/PID/status

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GiB = 1 << 30
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
FILL_SECONDS = 60.0         # a server may take this long to take them all
STALLED = 1000
NEW_CLIENT_TIMEOUT = 10.0
SETTLE = 1.0                # "1 s after": the measure


def log(msg):
    print("idle_clients: " + msg, file=sys.stderr, flush=True)


def raise_nofile():
    """Each idle client is a descriptor here and one in the server."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(f"RLIMIT_NOFILE raised from {soft} to the hard limit {hard} "
              f"(for this script and the servers it starts)")
    else:
        print(f"RLIMIT_NOFILE is already at the hard limit {hard}")
    return hard


def build_client(tmpdir):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("idle_clients.py needs a C compiler (make test-deps)")
    exe = os.path.join(tmpdir, "idle_clients")
    subprocess.run([cc, "-O2", "-o", exe,
                    os.path.join(HERE, "idle_clients.c")], check=True)
    return exe


def nbdkit_cap():
    """nbdkit 1.32 starts about 17 threads per client (-t 16): offered
    10,000 clients it takes the machine's last process IDs (about 32,000
    threads against kernel.pid_max 32768), so that no process on the
    machine can fork, fio included.  Offer it pid_max / 40 clients,
    which leaves half the IDs to everything else."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read()) // 40
    except (OSError, ValueError):
        return 800


def specs(args, tmpdir):
    image = os.path.join("/dev/shm", f"idle-bench-{os.getpid()}.img")
    with open(image, "wb") as f:
        f.truncate(GiB)
    return image, [
        ("nbdsrv", lambda s: [args.nbdsrv, "-f", "-U", s, "memory", "1G"]),
        ("nbdkit 1.32", lambda s: ["nbdkit", "-f", "-U", s, "memory", "1G"]),
        ("qemu-nbd 7.2", lambda s: ["qemu-nbd", "-t", "-e", "0", "-f", "raw",
                                    "-k", s, image]),
    ]


class Server:
    def __init__(self, argv, sock, logpath):
        self.sock = sock
        self.logf = open(logpath, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                new_client_read(sock, 2.0)
                return
            except OSError:
                if self.proc.poll() is not None or \
                        time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{argv[0]} did not start")
                time.sleep(0.05)

    def threads(self):
        return proc_status_number(self.pid, "Threads")

    def rss(self):
        return proc_status_number(self.pid, "VmRSS")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        if os.path.exists(self.sock):
            os.unlink(self.sock)


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return buf


def new_client_read(sock, timeout):
    """Connect, NBD_OPT_GO, one 4 KiB READ: seconds until its reply."""
    start = time.monotonic()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(sock)
        s.sendall(struct.pack(">IQII", 3, 0x49484156454F5054, 7, 6)
                  + bytes(6))
        recv_exact(s, 18)
        while True:
            _, _, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
            recv_exact(s, length)
            if rtype == 1:
                break
            if rtype & 0x80000000:
                raise ConnectionError("OPT_GO refused")
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 4096))
        magic, err, _ = struct.unpack(">IIQ", recv_exact(s, 16))
        if magic != 0x67446698 or err != 0:
            raise ConnectionError("READ failed")
        recv_exact(s, 4096)
    return time.monotonic() - start


def run_fio(sock, seconds):
    uri = f"nbd+unix:///?socket={sock}"
    try:
        r = run_fio_argv(uri, seconds)
    except OSError as e:                # cannot fork: no PID left
        log(f"fio did not start: {e}")
        return 0.0
    try:
        # fio's nbd engine prints a line before the JSON.
        out = r.stdout[r.stdout.index("{"):]
        return json.loads(out)["jobs"][0]["read"]["iops"]
    except (ValueError, KeyError, IndexError):
        log(f"fio failed: {r.stderr.strip()[-200:]}")
        return 0.0


def run_fio_argv(uri, seconds):
    return subprocess.run(
        ["fio", "--name=idle", "--ioengine=nbd", "--uri=" + uri,
         "--rw=randread", "--bs=4k", "--iodepth=8", "--numjobs=1",
         "--norandommap", "--randrepeat=0", f"--runtime={seconds}",
         "--time_based", "--output-format=json"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=seconds + 60)


class Clients:
    """bench/idle_clients.c holding MODE clients until close()."""

    def __init__(self, exe, mode, sock, n, seconds):
        self.proc = subprocess.Popen(
            [exe, mode, sock, str(n), str(seconds)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if len(line) != 6:
            self.close()
            raise RuntimeError("idle_clients gave no result")
        self.held, self.failed = int(line[1]), int(line[3])
        self.seconds = float(line[5])

    def close(self):
        try:
            self.proc.stdin.write("close\n")
            self.proc.stdin.flush()
            self.proc.stdout.readline()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(name, argv, exe, tmpdir, n, fio_seconds, fio_runs):
    sock = os.path.join(tmpdir, "sock")
    srv = Server(argv, sock, os.path.join(tmpdir, name.split()[0] + ".log"))
    res = {}
    try:
        log(f"{name}: fio alone")
        alone = [run_fio(sock, fio_seconds) for _ in range(fio_runs)]
        time.sleep(0.5)
        res["threads_base"], res["rss_base"] = srv.threads(), srv.rss()
        log(f"{name}: {n} idle clients")
        idle = Clients(exe, "fill", sock, n, FILL_SECONDS)
        try:
            res["held"] = idle.held
            res["rate"] = idle.held / idle.seconds if idle.seconds else 0
            time.sleep(SETTLE)
            res["threads"], rss = srv.threads(), srv.rss()
            res["rss_per_client"] = ((rss - res["rss_base"]) / idle.held
                                     if idle.held else None)
            log(f"{name}: fio with them")
            res["iops_with_runs"] = [run_fio(sock, fio_seconds)
                                     for _ in range(fio_runs)]
            res["iops_with"] = statistics.mean(res["iops_with_runs"])
        finally:
            idle.close()
        time.sleep(SETTLE)
        res["threads_after"], res["rss_after"] = srv.threads(), srv.rss()
        # Alone again, so that machine noise weighs on both sides.
        log(f"{name}: fio alone again")
        alone += [run_fio(sock, fio_seconds) for _ in range(fio_runs)]
        res["iops_alone_runs"] = alone
        res["iops_alone"] = statistics.mean(alone)
        log(f"{name}: {STALLED} stalled handshakes, then a new client")
        stalled = Clients(exe, "stall", sock, STALLED, 30)
        try:
            res["new_client_s"] = new_client_read(sock, NEW_CLIENT_TIMEOUT)
        except OSError as e:
            res["new_client_s"] = None
            res["new_client_err"] = str(e) or type(e).__name__
        finally:
            stalled.close()
        res["alive"] = srv.proc.poll() is None
    finally:
        srv.stop()
    return res


def fmt(v, kind):
    if v is None:
        return "—"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "kib":
        return f"{v:.1f} KiB"
    if kind == "s":
        return f"{v:.3f} s"
    if kind == "x":
        return f"{v:.2f}×"
    return str(v)


ROWS = [
    # label, key, kind, better ("low"/"high")
    ("idle clients offered", "offered", "int", None),
    ("idle clients held", "held", "int", "high"),
    ("server threads with them", "threads", "int", "low"),
    ("RSS per idle client", "rss_per_client", "kib", "low"),
    ("fio 4k randread QD8 IOPS alone", "iops_alone", "int", "high"),
    ("fio IOPS with them, vs alone", "iops_ratio", "x", "high"),
    ("clients connected per second while filling", "rate", "int", "high"),
    ("new client served with 1,000 stalled handshakes", "new_client_s",
     "s", "low"),
    ("threads: baseline / 1 s after all closed", "threads_pair", "str",
     None),
    ("RSS: baseline / 1 s after all closed", "rss_pair", "str", None),
]


def table(results, names):
    for r in results.values():
        r["iops_ratio"] = (r["iops_with"] / r["iops_alone"]
                           if r.get("iops_alone") else None)
        r["threads_pair"] = f"{r['threads_base']} / {r['threads_after']}"
        r["rss_pair"] = (f"{r['rss_base'] / 1024:.1f} / "
                         f"{(r['rss_after'] or 0) / 1024:.1f} MiB")
    head = ["measure"] + names + [f"nbdsrv vs {n}" for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for label, key, kind, better in ROWS:
        cells = [fmt(results[n].get(key), kind) for n in names]
        if key == "new_client_s":
            cells = [c if results[n].get(key) is not None else
                     "failed: " + results[n].get("new_client_err", "")
                     for c, n in zip(cells, names)]
        mine = results[names[0]].get(key)
        for n in names[1:]:
            theirs = results[n].get(key)
            if better is None or not mine or not theirs:
                cells.append("")
            else:
                cells.append(fmt(mine / theirs, "x"))
        lines.append("| " + " | ".join([label] + cells) + " |")
    return "\n".join(lines)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--fio-seconds", type=int, default=1)
    p.add_argument("--fio-runs", type=int, default=12,
                   help="fio runs in each phase: alone, with them, "
                   "alone again (default 12)")
    p.add_argument("--nbdsrv", default=os.path.join(REPO, "build", "nbdsrv"))
    p.add_argument("--servers", help="names to run, comma-separated "
                   "(nbdsrv,nbdkit,qemu-nbd)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if os.path.isdir(args.nbdsrv):
        args.nbdsrv = os.path.join(args.nbdsrv, "nbdsrv")
    hard = raise_nofile()
    if hard < args.clients + STALLED + 64:
        sys.exit(f"the hard RLIMIT_NOFILE ({hard}) is below "
                 f"{args.clients + STALLED + 64}: lower --clients")
    tmpdir = tempfile.mkdtemp(prefix="nbdsrv-idle-")
    image = None
    try:
        exe = build_client(tmpdir)
        image, servers = specs(args, tmpdir)
        want = args.servers.split(",") if args.servers else None
        results, names = {}, []
        for name, build in servers:
            if want and name.split()[0] not in want:
                continue
            if shutil.which(build("x")[0]) is None and \
                    not os.path.exists(build("x")[0]):
                log(f"{name}: not installed, skipped")
                continue
            sock = os.path.join(tmpdir, "sock")
            n = args.clients
            if name.startswith("nbdkit"):
                n = min(n, nbdkit_cap())
            results[name] = measure(name, build(sock), exe, tmpdir, n,
                                    args.fio_seconds, args.fio_runs)
            results[name]["offered"] = n
            names.append(name)
        print(f"\n{args.clients:,} idle clients on a Unix socket "
              f"(load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
              f"{os.getloadavg()[2]:.2f}, {os.cpu_count()} cores)\n")
        print(table(results, names))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        if image and os.path.exists(image):
            os.unlink(image)
        shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
