"""Many clients on one server, and many requests in flight on one
connection, against nbdsrv and Debian's nbdkit.
"""
import random
import threading
import time

import nbd
import pytest

from util import accepting

MiB = 1024 * 1024
NCLIENTS = 32
REGION = 1 * MiB

# Hang protection only (the machine is shared and may be slow): these
# bound how long we wait before calling a test stuck.
JOIN_TIMEOUT = 600
POLL_TIMEOUT_MS = 1000
MAX_POLLS = 100000


@pytest.fixture
def server(server):
    """conftest's server factory, returning only once the server
    accepts connections."""
    return accepting(server)


def region_data(i):
    """Distinct content for client I's region: seeded random bytes, so a
    block written to the wrong place or by the wrong client shows up."""
    return random.Random(1000 + i).randbytes(REGION)


def run_clients(uri, nclients, work):
    """Run WORK(handle, i) in NCLIENTS threads, each on its own
    connection, all released together by a barrier.  Return the list of
    exceptions raised (empty on success)."""
    barrier = threading.Barrier(nclients, timeout=JOIN_TIMEOUT)
    errors = []
    lock = threading.Lock()

    def client(i):
        h = None
        try:
            h = nbd.NBD()
            h.set_handle_name("client%d" % i)
            h.connect_uri(uri)
            barrier.wait()
            work(h, i)
        except Exception as ex:     # report every failure, not just one
            barrier.abort()
            with lock:
                errors.append((i, repr(ex)))
        finally:
            if h is not None and h.aio_is_ready():
                h.shutdown()

    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(nclients)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, "client threads still running: %s" % stuck
    return errors


def test_many_clients(server, impl):
    s = server("memory", "size=%d" % (NCLIENTS * REGION), impl=impl)

    def work(h, i):
        data = region_data(i)
        base = i * REGION
        # Write in pieces so requests from different clients interleave.
        for off in range(0, REGION, 64 * 1024):
            h.pwrite(data[off:off + 64 * 1024], base + off)
        h.flush()
        got = h.pread(REGION, base)
        if got != data:
            raise AssertionError("client %d read back different data" % i)

    errors = run_clients(s.uri, NCLIENTS, work)
    assert not errors, errors

    # One fresh client re-reads everything.
    h = nbd.NBD()
    h.connect_uri(s.uri)
    try:
        for i in range(NCLIENTS):
            got = h.pread(REGION, i * REGION)
            assert got == region_data(i), "region %d differs" % i
    finally:
        h.shutdown()


def test_many_clients_mixed_ops(server, impl):
    """Clients mix writes, zeroes, trims and reads on their own regions."""
    s = server("memory", "size=%d" % (NCLIENTS * REGION), impl=impl)

    def work(h, i):
        data = bytearray(region_data(i))
        base = i * REGION
        h.pwrite(bytes(data), base)
        h.zero(64 * 1024, base + 128 * 1024)
        data[128 * 1024:192 * 1024] = bytes(64 * 1024)
        h.trim(64 * 1024, base + 512 * 1024)
        data[512 * 1024:576 * 1024] = bytes(64 * 1024)
        h.pwrite(b"\xff" * 4096, base + REGION - 4096, nbd.CMD_FLAG_FUA)
        data[REGION - 4096:] = b"\xff" * 4096
        if h.pread(REGION, base) != bytes(data):
            raise AssertionError("client %d read back different data" % i)

    errors = run_clients(s.uri, NCLIENTS, work)
    assert not errors, errors


def wait_all(h, cookies):
    """Poll H until every command in COOKIES has completed (retired by
    aio_command_completed); bounded by MAX_POLLS and JOIN_TIMEOUT."""
    pending = list(cookies)
    deadline = time.monotonic() + JOIN_TIMEOUT
    for _ in range(MAX_POLLS):
        # aio_command_completed raises nbd.Error if the command failed.
        pending = [c for c in pending if not h.aio_command_completed(c)]
        if not pending:
            return
        assert time.monotonic() < deadline, \
            "%d commands still in flight" % len(pending)
        h.poll(POLL_TIMEOUT_MS)
    pytest.fail("%d commands still in flight after %d polls"
                % (len(pending), MAX_POLLS))


def test_requests_in_flight(server, impl):
    nreq = 16
    chunk = 256 * 1024
    s = server("memory", "size=%d" % (nreq * chunk), impl=impl)
    h = nbd.NBD()
    h.connect_uri(s.uri)
    try:
        datas = [random.Random(i).randbytes(chunk) for i in range(nreq)]
        wbufs = [nbd.Buffer.from_bytearray(bytearray(d)) for d in datas]
        cookies = [h.aio_pwrite(wbufs[i], i * chunk) for i in range(nreq)]
        # Nothing has been polled yet, so every write is still pending.
        assert h.aio_in_flight() == nreq
        wait_all(h, cookies)
        assert h.aio_in_flight() == 0

        rbufs = [nbd.Buffer(chunk) for _ in range(nreq)]
        # Reads issued in reverse order; replies may come in any order.
        cookies = [h.aio_pread(rbufs[i], i * chunk)
                   for i in reversed(range(nreq))]
        assert h.aio_in_flight() == nreq
        wait_all(h, cookies)
        for i in range(nreq):
            assert bytes(rbufs[i].to_bytearray()) == datas[i], \
                "chunk %d differs" % i
    finally:
        h.shutdown()


def test_mixed_requests_in_flight(server, impl):
    """Writes, a flush, zeroes and reads to disjoint ranges, all pending
    at once, with completion callbacks counting the replies."""
    chunk = 64 * 1024
    n = 32
    s = server("memory", "size=%d" % (2 * n * chunk), impl=impl)
    h = nbd.NBD()
    h.connect_uri(s.uri)
    done = []

    def completed(i, err):
        done.append((i, err.value))
        return 1        # retire the command

    try:
        datas = [random.Random(100 + i).randbytes(chunk) for i in range(n)]
        # Fill the second half with non-zero data to be zeroed below.
        h.pwrite(b"\x99" * (n * chunk), n * chunk)
        keep = []
        for i in range(n):
            buf = nbd.Buffer.from_bytearray(bytearray(datas[i]))
            keep.append(buf)
            h.aio_pwrite(buf, i * chunk,
                         completion=lambda err, i=i: completed(i, err))
            h.aio_zero(chunk, (n + i) * chunk,
                       completion=lambda err, i=i: completed(n + i, err))
        h.aio_flush(completion=lambda err: completed(-1, err))
        expected = 2 * n + 1
        assert h.aio_in_flight() == expected
        deadline = time.monotonic() + JOIN_TIMEOUT
        for _ in range(MAX_POLLS):
            if h.aio_in_flight() == 0:
                break
            assert time.monotonic() < deadline, "requests still in flight"
            h.poll(POLL_TIMEOUT_MS)
        assert len(done) == expected, done
        assert all(err == 0 for _, err in done), done
        assert h.pread(n * chunk, 0) == b"".join(datas)
        assert h.pread(n * chunk, n * chunk) == bytes(n * chunk)
    finally:
        h.shutdown()


def test_many_small_requests_in_flight(server, impl):
    """Hundreds of small reads and writes pending at once on one handle,
    so that replies are batched and may arrive in any order."""
    nreq = 256
    chunk = 4096
    s = server("memory", "size=%d" % (nreq * chunk), impl=impl)
    h = nbd.NBD()
    h.connect_uri(s.uri)
    try:
        datas = [bytes([i % 251 + 1]) * chunk for i in range(nreq)]
        wbufs = [nbd.Buffer.from_bytearray(bytearray(d)) for d in datas]
        # Odd chunks first, then even ones, interleaved with reads of
        # chunks whose write has already completed.
        order = list(range(1, nreq, 2)) + list(range(0, nreq, 2))
        wait_all(h, [h.aio_pwrite(wbufs[i], i * chunk) for i in order])
        rbufs = [nbd.Buffer(chunk) for _ in range(nreq)]
        cookies = []
        for i in order:
            cookies.append(h.aio_pread(rbufs[i], i * chunk))
            if i % 16 == 0:
                cookies.append(h.aio_flush())
        assert h.aio_in_flight() == len(cookies)
        wait_all(h, cookies)
        bad = [i for i in range(nreq)
               if bytes(rbufs[i].to_bytearray()) != datas[i]]
        assert not bad, "chunks read back wrong: %s" % bad
    finally:
        h.shutdown()
