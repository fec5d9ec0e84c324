"""Idle clients hold no thread (issue 11, item 4).

Hundreds of raw clients finish NBD_OPT_GO and sit idle: nbdsrv parks
them (server/park.c), so its thread count stays near twice the cores
however many there are, every one of them is still served when it asks,
the threads go back to the baseline once they leave, and shutdown closes
them.  Clients that connect and say nothing are parked too and cut at
--timeout.  Only structure is asserted (thread counts, answers, EOFs),
never a speed: every wait below is hang protection, polled.
"""
import os
import resource
import signal
import socket
import struct
import time

import nbd
import pytest

from test_thread_models import burst, counters, tm_plugin
from util import connect

N = 500                     # idle clients against nbdsrv
BLOCK = 4096
# Parked connections cost no thread: the acceptor pool (at most two
# waiting, plus the ones finishing a burst), the main thread, slack.
THREADS_MAX = 2 * (os.cpu_count() or 1) + 4
WAIT = 60                   # hang protection for each polled wait
IO_TIMEOUT = 60

IHAVEOPT = 0x49484156454F5054
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698


@pytest.fixture(autouse=True, scope="module")
def nofile():
    """Each client is a descriptor here and one in the server (which
    inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * N + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 2 * N + 128:
        pytest.skip("RLIMIT_NOFILE hard limit %d is too low for %d "
                    "clients" % (hard, N))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def threads(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def poll_until(fn, what):
    """Poll FN until it is true; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not fn():
        assert time.monotonic() < deadline, "still not %s after %d s" % (
            what, WAIT)
        time.sleep(0.02)


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "server closed the connection"
        buf += chunk
    return buf


def raw_client(sock):
    """A raw client that has finished NBD_OPT_GO on the default export."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(IO_TIMEOUT)
    s.connect(sock)
    # Fixed newstyle + no zeroes; OPT_GO, empty name, no info requests.
    s.sendall(struct.pack(">IQII", 3, IHAVEOPT, 7, 6) + bytes(6))
    recv_exact(s, 18)
    while True:
        _, _, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
        recv_exact(s, length)
        if rtype == 1:                  # NBD_REP_ACK
            return s
        assert not rtype & 0x80000000, "OPT_GO refused: %#x" % rtype


def raw_read(s, offset, cookie):
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 0, cookie, offset,
                          BLOCK))
    magic, err, got = struct.unpack(">IIQ", recv_exact(s, 16))
    assert (magic, err, got) == (SIMPLE_REPLY_MAGIC, 0, cookie)
    return recv_exact(s, BLOCK)


def pattern(i):
    return struct.pack(">I", i) * (BLOCK // 4)


def fill(srv, n):
    h = connect(srv)
    try:
        for i in range(n):
            h.pwrite(pattern(i), i * BLOCK)
    finally:
        h.shutdown()


def close_all(clients):
    for s in clients:
        s.close()


def test_idle_clients_hold_no_thread(server):
    srv = server("memory", "%d" % (N * BLOCK))
    fill(srv, N)
    poll_until(lambda: threads(srv.pid) <= THREADS_MAX, "settled")
    base_threads, base_fds = threads(srv.pid), open_fds(srv.pid)
    clients = []
    try:
        for _ in range(N):
            clients.append(raw_client(srv.sock))
        poll_until(lambda: threads(srv.pid) <= THREADS_MAX,
                   "at most %d threads with %d idle clients"
                   % (THREADS_MAX, N))
        # Every parked client is still served, with its own block.
        for i, s in enumerate(clients):
            assert raw_read(s, i * BLOCK, i) == pattern(i), "client %d" % i
        poll_until(lambda: threads(srv.pid) <= THREADS_MAX,
                   "parked again after one request each")
        assert open_fds(srv.pid) >= base_fds + N
    finally:
        close_all(clients)
    poll_until(lambda: open_fds(srv.pid) <= base_fds,
               "all %d connections freed" % N)
    poll_until(lambda: threads(srv.pid) <= base_threads,
               "back to the %d threads of before" % base_threads)
    assert srv.alive()


def test_idle_clients_closed_at_shutdown(server):
    """SIGTERM closes parked connections (R-28): each client reads EOF,
    and the server exits cleanly.  (Debian's nbdkit 1.32 instead waits
    for idle clients to leave, past any reasonable bound.)"""
    srv = server("memory", "1M")
    clients = [raw_client(srv.sock) for _ in range(N)]
    try:
        assert raw_read(clients[0], 0, 1) == bytes(BLOCK)
        assert srv.stop(signal.SIGTERM, timeout=WAIT) == 0
        for s in clients:
            assert s.recv(1) == b""
    finally:
        close_all(clients)


def test_stalled_handshakes_hold_no_thread(server):
    """Clients that connect and send nothing are parked soon after the
    greeting: no thread is held for them, a new client is served
    meanwhile, and --timeout still cuts them with its message."""
    n = 100
    srv = server("--timeout=1", "memory", "1M")
    stalled = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(WAIT)
            s.connect(srv.sock)
            stalled.append(s)
        for s in stalled:
            assert len(recv_exact(s, 18)) == 18     # the greeting
        poll_until(lambda: threads(srv.pid) <= THREADS_MAX,
                   "at most %d threads with %d stalled clients"
                   % (THREADS_MAX, n))
        h = connect(srv)
        assert h.pread(BLOCK, 0) == bytes(BLOCK)
        h.shutdown()
        for s in stalled:
            assert s.recv(1) == b"", "a stalled client was not cut"
    finally:
        close_all(stalled)
    cut = [line for line in srv.stderr_text().splitlines()
           if "did not finish the handshake within 1 seconds" in line]
    assert len(cut) == n


def test_parallel_requests_after_parking(server):
    """A connection that parked and woke still runs its requests in
    parallel (more workers start on demand after the wake)."""
    srv = server(tm_plugin("parallel"))
    h = connect(srv)
    idle = [raw_client(srv.sock) for _ in range(50)]
    try:
        c = None
        for _ in range(5):
            poll_until(lambda: threads(srv.pid) <= THREADS_MAX,
                       "parked")
            burst(h, 16)
            c = counters(h)
            if c["max_active_handle"] > 1:
                break
        assert c["max_active_handle"] > 1, \
            "requests never overlapped after parking: %s" % c
    finally:
        h.shutdown()
        close_all(idle)


def test_request_while_another_runs_long(server):
    """A client that sends a request while a long one runs, after a
    pause longer than the grace period, is answered at once: the worker
    reading the socket does not leave while requests are in flight.  The
    write takes SLOW_WRITE seconds in the delay filter; the read is
    answered while the write is still pending (an order, not a time)."""
    slow_write = 5
    srv = server("--filter=delay", "memory", "1M",
                 "wdelay=%d" % slow_write)
    h = connect(srv)
    try:
        wcookie = h.aio_pwrite(nbd.Buffer.from_bytearray(
            bytearray(BLOCK)), BLOCK)
        h.poll(100)                     # let the write leave; the reader
        time.sleep(0.2)                 # then waits past the grace period
        rbuf = nbd.Buffer(BLOCK)
        rcookie = h.aio_pread(rbuf, 0)
        deadline = time.monotonic() + WAIT
        while not h.aio_command_completed(rcookie):
            assert time.monotonic() < deadline, "the read was not answered"
            h.poll(1000)
        assert not h.aio_command_completed(wcookie), \
            "the read waited for the %d s write" % slow_write
        while not h.aio_command_completed(wcookie):
            assert time.monotonic() < deadline, "the write never finished"
            h.poll(1000)
    finally:
        h.shutdown()
