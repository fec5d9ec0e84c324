"""WRITEs received straight into the memory plugin's pages.

From 64 KiB up, nbdsrv reads a WRITE payload from the socket into fresh
pages the memory plugin hands out and links them in when the payload is
complete (common/include/write-target.h).  These tests drive that path
with the writes it must get right: unaligned starts and ends (pages
only partly covered keep the rest of the old page, or zeroes), writes
over holes, trims and zeroes in between, FUA (which takes the pwrite
path), and many clients writing at once; the disk must read back as a
model of it says, and map the same as Debian's nbdkit after the same
requests.  A payload cut short never lands: test_faults.py.
"""
import os
import random
import threading
import time

import pytest

from conftest import NBDSRV
from nbdraw import (Client, CMD_FLAG_PAYLOAD_LEN, CMD_FLUSH, CMD_READ,
                    CMD_WRITE)
from test_idle_cpu import CLK_TCK, cpu_ticks
from util import accepting, block_status, connect, start_both

nbd = pytest.importorskip("nbd")

KiB = 1024
MiB = 1024 * KiB
SIZE = 8 * MiB

# (operation, offset, length): offsets and lengths chosen to start and
# end inside 32 KiB pages, cover whole pages, and land on holes, on
# written pages and on trimmed ones.
OPS = [
    ("write", 0, MiB),
    ("write", 12345, 100000),
    ("trim", 2 * MiB, MiB),
    ("write", 2 * MiB + 5000, 64 * KiB),
    ("write", 3 * MiB - 7, MiB + 14),
    ("zero", 512 * KiB, 96 * KiB),
    ("write_fua", 5 * MiB + 1, 200 * KiB),
    ("write", 6 * MiB + 32 * KiB, 32 * KiB),
    ("write", 7 * MiB - 100 * KiB, 100 * KiB),
    ("write", SIZE - 65536 - 3, 65536 + 3),
]


def run_ops(h, seed):
    """Apply OPS to H with data from SEED; return the expected disk."""
    rnd = random.Random(seed)
    model = bytearray(SIZE)
    for op, off, length in OPS:
        if op.startswith("write"):
            data = rnd.randbytes(length)
            flags = nbd.CMD_FLAG_FUA if op == "write_fua" else 0
            h.pwrite(data, off, flags)
            model[off:off + length] = data
        elif op == "trim":
            h.trim(length, off)
            model[off:off + length] = bytes(length)
        else:
            h.zero(length, off)
            model[off:off + length] = bytes(length)
    return bytes(model)


def test_writes_land_as_a_model_says_and_map_as_nbdkit(server):
    maps, contents = {}, {}
    for srv in start_both(server, "memory", "size=%d" % SIZE):
        h = connect(srv)
        model = run_ops(h, 7)
        contents[srv.impl] = h.pread(SIZE, 0)
        maps[srv.impl] = block_status(h, SIZE, 0)
        h.shutdown()
        assert contents[srv.impl] == model, srv.impl
    assert maps["nbdsrv"] == maps["nbdkit"]


def test_a_write_over_itself_replaces_whole(server):
    """The same 1 MiB region written twice, unaligned: the second write
    wins everywhere, and bytes around it keep the first."""
    srv = server("memory", "size=4M")
    h = connect(srv)
    first, second = os.urandom(2 * MiB), os.urandom(MiB)
    h.pwrite(first, 0)
    h.pwrite(second, 100 * KiB + 3)
    want = bytearray(first)
    want[100 * KiB + 3:100 * KiB + 3 + MiB] = second
    assert h.pread(2 * MiB, 0) == bytes(want)
    h.shutdown()


def test_clients_writing_and_trimming_at_once(server):
    """Eight clients each own a 1 MiB region: they write it in 96 KiB
    pieces, trim parts of it and write again, all at once.  Each region
    ends as its owner's model, so no write landed in another's pages."""
    clients = 8
    srv = server("-t", "4", "memory", "size=%d" % (clients * MiB))
    failures = []

    def client(k):
        try:
            rnd = random.Random(k)
            base = k * MiB
            model = bytearray(MiB)
            h = connect(srv)
            for rnd_op in range(40):
                off = rnd.randrange(0, MiB - 96 * KiB)
                if rnd_op % 5 == 4:
                    h.trim(64 * KiB, base + off)
                    model[off:off + 64 * KiB] = bytes(64 * KiB)
                else:
                    data = rnd.randbytes(96 * KiB)
                    h.pwrite(data, base + off)
                    model[off:off + 96 * KiB] = data
            if h.pread(MiB, base) != bytes(model):
                failures.append("client %d: region differs" % k)
            h.shutdown()
        except Exception as e:              # reported below
            failures.append("client %d: %r" % (k, e))

    threads = [threading.Thread(target=client, args=(k,))
               for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "clients hung"
    assert not failures, failures


def test_in_place_write_on_stdin():
    """-s: the client is on stdin/stdout, not a socket; a large write
    lands and reads back there too."""
    h = nbd.NBD()
    h.connect_command([NBDSRV, "-s", "memory", "size=4M"])
    data = os.urandom(MiB)
    h.pwrite(data, 12345)
    assert h.pread(MiB, 12345) == data
    h.shutdown()


STILL = 4 * MiB - 64 * KiB    # not written while requests are in flight


def pipelined_writes_and_reads(c, flags):
    """Large WRITEs each followed at once by small requests, all sent
    before any reply is read: after a large payload nbdsrv reads only
    the next header, so each request must still be framed where the
    last one ended.  Requests in flight together may run in any order,
    so the READs among them read a region written before.  Returns the
    requests, the replies by cookie and the model."""
    rnd = random.Random(11)
    model = bytearray(4 * MiB)
    still = rnd.randbytes(64 * KiB)
    model[STILL:STILL + len(still)] = still
    assert c.request(CMD_WRITE, flags, offset=STILL, length=len(still),
                     payload=still).error == 0
    sent = []
    # No two writes overlap: those in flight together land in any order.
    for off, length in ((0, MiB), (MiB + 64 * KiB + 5, 200 * KiB),
                        (3 * MiB, 64 * KiB), (2 * MiB - 3, 96 * KiB)):
        data = rnd.randbytes(length)
        model[off:off + length] = data
        sent.append((c.send_request(CMD_WRITE, flags, offset=off,
                                    length=length, payload=data), None))
        small = rnd.randbytes(512)
        at = off + length + 4096
        model[at:at + 512] = small
        sent.append((c.send_request(CMD_WRITE, flags, offset=at,
                                    length=512, payload=small), None))
        at = STILL + rnd.randrange(60 * KiB)
        sent.append((c.send_request(CMD_READ, offset=at, length=4096),
                     (at, 4096)))
        sent.append((c.send_request(CMD_FLUSH), None))
    replies = {}
    for _ in sent:
        r = c.read_reply()
        replies[r.cookie] = r
    return sent, replies, model


@pytest.mark.parametrize("extended", [False, True],
                         ids=["compact", "extended"])
def test_small_requests_right_behind_large_payloads(server, extended):
    srv = accepting(server)("memory", "size=4M")
    with Client(srv.sock) as c:
        if extended:
            c.start()
            c.extended_headers()
            c.go()
        else:
            c.handshake(structured=True)
        flags = CMD_FLAG_PAYLOAD_LEN if extended else 0
        sent, replies, model = pipelined_writes_and_reads(c, flags)
        for cookie, read in sent:
            assert replies[cookie].error == 0, replies[cookie]
            if read:
                off, length = read
                assert replies[cookie].data == model[off:off + length]
        r = c.request(CMD_READ, offset=0, length=4 * MiB)
        assert r.error == 0 and r.data == model


def test_a_payload_that_trickles_in(server):
    """A 1 MiB payload sent in pieces 50 ms apart, past both the
    server's poll and the 5 ms receive timeout it parks by: the write
    lands whole, and the connection goes on."""
    srv = accepting(server)("memory", "size=4M")
    data = os.urandom(MiB)
    bounds = [0, 1000, 300 * KiB, 301 * KiB, 900 * KiB, MiB]
    with Client(srv.sock) as c:
        c.handshake(structured=True)
        cookie = c.send_request(CMD_WRITE, offset=4096, length=MiB,
                                payload=b"")
        for start, end in zip(bounds, bounds[1:]):
            c.send(data[start:end])
            time.sleep(0.05)
        r = c.read_reply()
        assert r.cookie == cookie and r.error == 0, r
        r = c.request(CMD_READ, offset=4096, length=MiB)
        assert r.error == 0 and r.data == data


def test_a_trickled_payload_does_not_keep_the_server_busy(server):
    """A 64 KiB payload sent in 1,000 pieces about half a millisecond
    apart: the server polls at most 114 us over the whole payload
    (50 us plus 1 us per KiB), then blocks between pieces, so its CPU
    time stays a small share of the trickle's duration.  A server that
    polled through every gap would be busy all along."""
    srv = accepting(server)("memory", "size=4M")
    data = os.urandom(64 * KiB)
    piece = len(data) // 1000 + 1
    with Client(srv.sock) as c:
        c.handshake(structured=True)
        assert c.request(CMD_FLUSH).error == 0
        ticks = cpu_ticks(srv.pid)
        start = time.monotonic()
        cookie = c.send_request(CMD_WRITE, offset=0, length=len(data),
                                payload=b"")
        for off in range(0, len(data), piece):
            c.send(data[off:off + piece])
            time.sleep(0.0005)
        r = c.read_reply()
        elapsed = time.monotonic() - start
        ticks = cpu_ticks(srv.pid) - ticks
        assert r.cookie == cookie and r.error == 0, r
        assert c.request(CMD_READ, offset=0, length=len(data)).data == data
    assert ticks / CLK_TCK < 0.25 * elapsed, (ticks, elapsed)
