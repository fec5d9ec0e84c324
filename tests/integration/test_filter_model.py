"""Model check of filter stacks: several clients at once send random
reads, writes, trims, zeroes and flushes, and every read is checked
against an in-memory model of the disk.

Each client owns a region of its own, so the model is exact, but the
regions' edges fall inside the blocks the filters work in (cow's and
cache's 64 KiB, blocksize's minimum), so neighbours' read-modify-write
cycles meet in the same block.  Bounded: a fixed number of requests per
client, and a fixed seed per run.
"""
import random
import threading

import nbd
import pytest

from util import accepting, connect

KiB = 1024
MiB = 1024 * KiB
DISK = 4 * MiB
CLIENTS = 4
REQUESTS = 300

STACKS = {
    "cow": ["--filter=cow"],
    "cache": ["--filter=cache"],
    "blocksize": ["--filter=blocksize", "minblock=4k", "maxdata=32k"],
    "cow-cache-blocksize": ["--filter=cow", "--filter=cache",
                            "--filter=blocksize", "minblock=4k",
                            "maxdata=32k"],
}


@pytest.fixture
def server(server):
    return accepting(server)


def regions():
    """CLIENTS regions covering most of the disk, with edges 3 KiB off
    any 64 KiB boundary."""
    step = (DISK - 64 * KiB) // CLIENTS
    return [(i * step + 3 * KiB, step) for i in range(CLIENTS)]


def client_run(h, start, length, model, seed, failures):
    rnd = random.Random(seed)
    ops = ["read", "read", "write", "write", "flush"] + \
        ["trim"] * h.can_trim() + ["zero"] * h.can_zero()
    try:
        for _ in range(REQUESTS):
            n = rnd.randrange(1, 40) * 512
            off = start + rnd.randrange(0, (length - n) // 512) * 512
            op = rnd.choice(ops)
            if op == "read":
                got = h.pread(n, off)
                if got != bytes(model[off:off + n]):
                    failures.append("read %d+%d differs" % (off, n))
                    return
            elif op == "write":
                data = bytes([rnd.getrandbits(8)]) * n
                h.pwrite(data, off)
                model[off:off + n] = data
            elif op == "trim":
                # A trimmed range may read as zeroes or as before: check
                # it no more until it is written again.
                h.trim(n, off)
                h.pwrite(bytes(n), off)
                model[off:off + n] = bytes(n)
            elif op == "zero":
                h.zero(n, off)
                model[off:off + n] = bytes(n)
            else:
                h.flush()
    except nbd.Error as e:
        failures.append("%s" % e)


def run_model(srv, seed):
    model = bytearray(DISK)
    failures = []
    handles = [connect(srv) for _ in range(CLIENTS)]
    threads = [threading.Thread(target=client_run,
                                args=(h, start, length, model, seed + i,
                                      failures))
               for i, (h, (start, length)) in enumerate(zip(handles,
                                                            regions()))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
        assert not t.is_alive(), "a client hung"
    assert not failures, failures
    # One more client reads the whole disk back.
    h = connect(srv)
    for off in range(0, DISK, 256 * KiB):
        assert h.pread(256 * KiB, off) == bytes(model[off:off + 256 * KiB]), \
            "final read at %d" % off
    for x in handles + [h]:
        x.shutdown()


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_model(server, impl, stack):
    """nbdsrv's stack (with its own filters where it has them) and
    Debian's nbdkit with the same command line both keep the disk
    exactly as the model says."""
    args = STACKS[stack]
    filters = [a for a in args if a.startswith("--filter")]
    params = [a for a in args if not a.startswith("--filter")]
    srv = server(*filters, "memory", "4M", *params, impl=impl)
    run_model(srv, seed=1234)
