#!/usr/bin/python3
"""libnbd clients for tests/soak/soak.sh.

    nbdclients.py URI SECONDS CLIENTS BASE_MIB

Each client owns a 32 MiB region starting at BASE_MIB + k * 128 MiB,
cut into 64 KiB slots, and keeps a shadow copy of it.  It keeps up to
16 commands in flight (random writes, zeroes, trims, flushes, and reads
checked against the shadow), never two on one slot, until SECONDS have
passed; then it reads the whole region back and compares.  Prints one
line per client and exits 1 on any mismatch or error.
"""
import os
import random
import sys
import threading
import time

import nbd

REGION = 32 * 1024 * 1024
SLOT = 64 * 1024
QD = 16


class Client:
    def __init__(self, uri, base, seed):
        self.h = nbd.NBD()
        self.h.connect_uri(uri)
        self.base = base
        self.rng = random.Random(seed)
        self.shadow = bytearray(REGION)
        self.busy = {}          # cookie -> (kind, slot, start, data/buf)
        self.used = set()
        self.ops = {"write": 0, "read": 0, "zero": 0, "trim": 0,
                    "flush": 0}
        self.bytes = 0
        self.errors = []

    def submit(self):
        free = self.rng.randrange(REGION // SLOT)
        if free in self.used:
            return
        start = free * SLOT + self.rng.randrange(0, SLOT, 512)
        length = self.rng.randrange(512, SLOT - (start % SLOT) + 1, 512)
        off = self.base + start
        kind = self.rng.choices(["write", "read", "zero", "trim", "flush"],
                                [45, 40, 6, 6, 3])[0]
        if kind == "write":
            data = self.rng.randbytes(length)
            c = self.h.aio_pwrite(data, off)
            extra = data
        elif kind == "read":
            extra = nbd.Buffer(length)
            c = self.h.aio_pread(extra, off)
        elif kind == "zero":
            c = self.h.aio_zero(length, off)
            extra = None
        elif kind == "trim":
            c = self.h.aio_trim(length, off)
            extra = None
        else:
            c = self.h.aio_flush()
            extra = None
        self.busy[c] = (kind, free, start, length, extra)
        self.used.add(free)

    def complete(self, cookie):
        kind, slot, start, length, extra = self.busy.pop(cookie)
        self.used.discard(slot)
        try:
            self.h.aio_command_completed(cookie)
        except nbd.Error as e:
            self.errors.append("%s at %d: %s" % (kind, start, e))
            return
        self.ops[kind] += 1
        if kind == "write":
            self.shadow[start:start + length] = extra
            self.bytes += length
        elif kind == "read":
            got = extra.to_bytearray()
            self.bytes += length
            if got != self.shadow[start:start + length]:
                self.errors.append("read at %d: data mismatch" % start)
        elif kind in ("zero", "trim"):
            # The memory plugin reads trimmed ranges back as zeroes.
            self.shadow[start:start + length] = bytes(length)

    def reap(self):
        """Retire every completed command."""
        while self.busy:
            cookie = self.h.aio_peek_command_completed()
            if cookie == 0:
                break
            self.complete(cookie)

    def run(self, deadline):
        while time.monotonic() < deadline and not self.errors:
            while len(self.busy) < QD:
                self.submit()
            self.h.poll(-1)
            self.reap()
        while self.busy:
            self.h.poll(-1)
            self.reap()
        # Final check of the whole region.
        step = 4 * 1024 * 1024
        for off in range(0, REGION, step):
            if self.h.pread(step, self.base + off) != \
               self.shadow[off:off + step]:
                self.errors.append("final read at %d: mismatch" % off)
        self.h.shutdown()


def main():
    uri, seconds, nclients, base_mib = (sys.argv[1], float(sys.argv[2]),
                                        int(sys.argv[3]), int(sys.argv[4]))
    deadline = time.monotonic() + seconds
    clients = [Client(uri, (base_mib + k * 128) * 1024 * 1024, k)
               for k in range(nclients)]
    threads = [threading.Thread(target=c.run, args=(deadline,))
               for c in clients]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    failed = False
    total_ops = 0
    for k, c in enumerate(clients):
        n = sum(c.ops.values())
        total_ops += n
        print("client %d: %d ops (%s), %.0f MiB moved, %d errors%s"
              % (k, n, ", ".join("%s %d" % kv for kv in c.ops.items()),
                 c.bytes / 1048576, len(c.errors),
                 (": " + "; ".join(c.errors[:3])) if c.errors else ""))
        failed |= bool(c.errors)
    print("total: %d ops in %.0f s, %.0f ops/s; final read-back of %d x "
          "32 MiB %s" % (total_ops, elapsed, total_ops / elapsed, nclients,
                         "FAILED" if failed else "matched"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
