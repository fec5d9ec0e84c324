#!/usr/bin/python3
"""Hole replies: bytes on the wire and wall time to copy a mostly empty
disk, nbdsrv against nbdkit and qemu-nbd serving the same sparse file.

    bench/holes.py [--size 8G] [--data-percent 10] [--json FILE]

The image is a sparse file in /dev/shm with DATA-PERCENT of it written
in 1 MiB pieces at random places.  Each server serves it read-only on a
Unix socket; each client copies all of it to nowhere:

- nbdcopy (which skips what block status calls zero),
- nbdcopy --no-extents (which reads everything: here hole replies
  matter),
- qemu-img convert to a raw file in /dev/shm (which asks block status
  too).

Time is measured on a direct connection; bytes on the wire through a
counting relay (a second run), as what the server sent the client.
Ratios are nbdsrv's against each peer's, measured in the same run.
"""
import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ENV = dict(os.environ, PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))
START_TIMEOUT = 30
COPY_TIMEOUT = 900


def parse_size(text):
    mult = {"K": KiB, "M": MiB, "G": GiB}
    if text[-1].upper() in mult:
        return int(text[:-1]) * mult[text[-1].upper()]
    return int(text)


def make_image(path, size, percent, seed=42):
    rnd = random.Random(seed)
    pieces = size // MiB
    chosen = sorted(rnd.sample(range(pieces), pieces * percent // 100))
    with open(path, "wb") as f:
        f.truncate(size)
        for i in chosen:
            f.seek(i * MiB)
            f.write(rnd.randbytes(MiB))
    return len(chosen) * MiB


class Relay:
    """Relay one Unix socket to another, counting the bytes the server
    sends back.  One thread per direction, bounded by the copies."""

    def __init__(self, listen, target):
        self.target = target
        self.down = 0
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(listen)
        self.sock.listen(16)
        self.path = listen
        self.threads = []
        t = threading.Thread(target=self.accept_loop, daemon=True)
        t.start()

    def accept_loop(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.target)
            for src, dst, count in ((client, server, False),
                                    (server, client, True)):
                t = threading.Thread(target=self.pump,
                                     args=(src, dst, count), daemon=True)
                t.start()
                self.threads.append(t)

    def pump(self, src, dst, count):
        try:
            while True:
                data = src.recv(4 * MiB)
                if not data:
                    break
                if count:
                    self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()
        for t in self.threads:
            t.join(60)


def wait_socket(path, proc):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with %d" % proc.returncode)
        if os.path.exists(path):
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(path)
                    return
                except OSError:
                    pass
        time.sleep(0.02)
    raise RuntimeError("server did not listen on %s" % path)


def servers(nbdsrv, image):
    return {
        "nbdsrv": lambda sock: [nbdsrv, "-f", "-r", "-U", sock, "file",
                                image],
        "nbdkit": lambda sock: ["nbdkit", "-f", "-r", "-U", sock, "file",
                                image],
        "qemu-nbd": lambda sock: ["qemu-nbd", "-t", "-e", "8", "-r", "-f",
                                  "raw", "-k", sock, image],
    }


def clients(out):
    return {
        "nbdcopy": lambda uri: ["nbdcopy", uri, "null:"],
        "nbdcopy --no-extents": lambda uri: ["nbdcopy", "--no-extents", uri,
                                             "null:"],
        "qemu-img convert": lambda uri: ["qemu-img", "convert", "-f", "raw",
                                         "-O", "raw", uri, out],
    }


def run_client(argv):
    start = time.monotonic()
    subprocess.run(argv, check=True, env=ENV, timeout=COPY_TIMEOUT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - start


def measure(tmp, name, server_argv, client_argv):
    """Start a server, copy once directly (timed) and once through the
    relay (counted), stop the server; NAME is unique per measurement."""
    sock = os.path.join(tmp, name + ".sock")
    proc = subprocess.Popen(server_argv(sock), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_socket(sock, proc)
        seconds = run_client(client_argv("nbd+unix:///?socket=" + sock))
        relay = Relay(os.path.join(tmp, name + ".relay"), sock)
        run_client(client_argv("nbd+unix:///?socket=" + relay.path))
        relay.close()
        return seconds, relay.down
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="8G")
    p.add_argument("--data-percent", type=int, default=10)
    p.add_argument("--nbdsrv", default=os.path.join(REPO, "build", "nbdsrv"))
    p.add_argument("--json")
    args = p.parse_args(argv)
    size = parse_size(args.size)
    tmp = tempfile.mkdtemp(prefix="nbdsrv-holes-", dir="/dev/shm")
    results = {}
    try:
        image = os.path.join(tmp, "disk.img")
        data = make_image(image, size, args.data_percent)
        out = os.path.join(tmp, "out.img")
        for i, (cname, cargv) in enumerate(clients(out).items()):
            for sname, sargv in servers(args.nbdsrv, image).items():
                if os.path.exists(out):
                    os.unlink(out)
                results[(cname, sname)] = measure(
                    tmp, "%s-%d" % (sname, i), sargv, cargv)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%s disk, %d MiB of data (%d%%)" % (args.size, data // MiB,
                                              args.data_percent))
    print("%-22s %-9s %10s %12s %10s %10s" % (
        "client", "server", "seconds", "MiB on wire", "time/srv",
        "bytes/srv"))
    rows = []
    for (cname, sname), (secs, down) in results.items():
        ours = results[(cname, "nbdsrv")]
        row = {"client": cname, "server": sname, "seconds": secs,
               "wire_bytes": down, "time_vs_nbdsrv": secs / ours[0],
               "bytes_vs_nbdsrv": down / ours[1] if ours[1] else None}
        rows.append(row)
        print("%-22s %-9s %10.2f %12.1f %9.2fx %9.2fx" % (
            cname, sname, secs, down / MiB, row["time_vs_nbdsrv"],
            row["bytes_vs_nbdsrv"] or 0))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": size, "data": data, "rows": rows}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
