"""Basic plugins (memory, null, zero, full, pattern): what a libnbd
client sees from nbdsrv with our plugin must equal what it sees from
Debian's nbdkit with its own plugin of the same name and arguments:
export flags, data, block status and errors.  The memory plugin must
also stay sparse.

Set NBDSRV_PLUGINS_UNDER_NBDKIT=1 to run our plugins (from
$NBDSRV_BUILD/plugins) under Debian's nbdkit instead of nbdsrv, which
checks the plugins alone while the server is not built yet.
"""
import os
import random

import nbd
import pytest

from conftest import plugin_path
from util import block_status, connect, errno_of, export_flags

OURS_UNDER_NBDKIT = os.environ.get("NBDSRV_PLUGINS_UNDER_NBDKIT") == "1"
PAGE = 32768


def start_ours(server, name, *args):
    if OURS_UNDER_NBDKIT:
        return server(plugin_path(name), *args, impl="nbdkit")
    return server(name, *args, impl="nbdsrv")


def start_pair(server, name, *args):
    """Our plugin and Debian's, started with the same arguments."""
    return start_ours(server, name, *args), server(name, *args, impl="nbdkit")


def status_queries(size):
    """Block status requests worth comparing on a disk of SIZE."""
    if size == 0:
        return []
    whole = min(size, 1 << 30)
    q = [(whole, 0, 0), (whole, 0, nbd.CMD_FLAG_REQ_ONE)]
    if size > 3 * PAGE:
        q += [(PAGE, PAGE, 0), (1000, PAGE + 5, 0),
              (size - 70001, 70001, 0), (4096, size - 4096, 0)]
    return q


def read_queries(size):
    """Reads (count, offset) worth comparing: aligned, unaligned, tail."""
    if size == 0:
        return []
    rnd = random.Random(size)
    q = [(min(size, 1 << 20), 0), (min(size, 13), size - min(size, 13))]
    for _ in range(50):
        off = rnd.randrange(size)
        q.append((rnd.randint(1, min(size - off, 100000)), off))
    return q


def assert_same_view(ours, theirs):
    a, b = connect(ours), connect(theirs)
    assert export_flags(a) == export_flags(b)
    size = a.get_size()
    for count, offset in read_queries(size):
        assert a.pread(count, offset) == b.pread(count, offset), \
            "pread count=%d offset=%d" % (count, offset)
    for count, offset, flags in status_queries(size):
        assert block_status(a, count, offset, flags) == \
            block_status(b, count, offset, flags), \
            "block status count=%d offset=%d flags=%d" % (count, offset, flags)
    return a, b


def apply_both(handles, fn):
    """Run FN on each handle; the outcomes (errno or 0) must agree."""
    results = [errno_of(lambda h=h: fn(h)) for h in handles]
    assert results[0] == results[1], results
    return results[0]


CASES = [
    ("memory", ["size=1M"]),
    ("memory", ["1000001"]),            # magic key, size not page aligned
    ("null", ["size=1M"]),
    ("null", []),
    ("zero", []),
    ("full", ["1M"]),
    ("pattern", ["size=1M"]),
    ("pattern", ["1000003"]),           # last word cut short
]


@pytest.mark.parametrize("name,args", CASES,
                         ids=["%s-%s" % (n, "-".join(a) or "noargs")
                              for n, a in CASES])
def test_plugin_matches_nbdkit(server, name, args):
    ours, theirs = start_pair(server, name, *args)
    handles = assert_same_view(ours, theirs)
    size = handles[0].get_size()
    if size == 0 or handles[0].is_read_only():
        return

    # The examples from the memory plugin's brief, then partial-page
    # zero, trim and zero-filled writes, which decide what is a hole.
    ops = [
        lambda h: h.pwrite(b"\x55" * 4096, 65536),
        lambda h: h.pwrite(b"\xaa" * 100, 3 * PAGE - 50),
        lambda h: h.pwrite(bytes(4096), 6 * PAGE + 10),
        lambda h: h.zero(10, 65536 + 5),
        lambda h: h.zero(PAGE, 2 * PAGE, nbd.CMD_FLAG_NO_HOLE),
        lambda h: h.trim(4096, 65536),
        lambda h: h.pwrite(b"\x01" * 10, 8 * PAGE + 30000),
        lambda h: h.zero(PAGE, 8 * PAGE + 1, nbd.CMD_FLAG_FAST_ZERO),
        lambda h: h.pwrite(b"\x02" * 10, size - 10, nbd.CMD_FLAG_FUA),
        lambda h: h.flush(),
        lambda h: h.cache(4096, 0),
    ]
    for op in ops:
        apply_both(handles, op)
        assert_same_view(ours, theirs)


def test_full_fails_with_enospc(server):
    ours, theirs = start_pair(server, "full", "size=1M")
    handles = [connect(ours), connect(theirs)]
    assert apply_both(handles, lambda h: h.pwrite(b"x", 0)) == 28
    assert apply_both(handles, lambda h: h.trim(4096, 0)) == 28
    assert apply_both(handles, lambda h: h.zero(4096, 0)) == 28


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def test_memory_is_sparse(server):
    """A 1 TiB disk costs roughly what is written: 8 MiB contiguous at
    both ends and 128 pages scattered over the whole disk."""
    srv = start_ours(server, "memory", "size=1T")
    h = connect(srv)
    size = h.get_size()
    assert size == 1 << 40
    before = rss_kib(srv.pid)

    chunk = bytes(range(1, 256)) * 1029
    chunk = chunk[:256 << 10]
    written = 0
    for i in range(16):
        h.pwrite(chunk, i * len(chunk))
        h.pwrite(chunk, size - (i + 1) * len(chunk))
        written += 2 * len(chunk)
    rnd = random.Random(1)
    offsets = sorted(rnd.randrange(64, size // PAGE - 64) * PAGE
                     for _ in range(128))
    for off in offsets:
        h.pwrite(chunk[:PAGE], off)
        written += PAGE

    growth = rss_kib(srv.pid) - before
    limit = written * 1.10 / 1024 + 8 * 1024
    assert growth < limit, \
        "RSS grew %d KiB for %d KiB written (limit %d KiB)" \
        % (growth, written >> 10, limit)

    # The data is really there and everything else is still a hole.
    assert h.pread(len(chunk), 0) == chunk
    assert h.pread(PAGE, offsets[0]) == chunk[:PAGE]
    assert h.pread(PAGE, offsets[0] + PAGE) == bytes(PAGE)
    gap_start = 16 * len(chunk)
    gap = min(offsets[0] - gap_start, 1 << 30)
    assert block_status(h, gap, gap_start)[:2] == \
        [gap, nbd.STATE_HOLE | nbd.STATE_ZERO]
