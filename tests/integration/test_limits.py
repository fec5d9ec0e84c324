"""Server limits that keep one client from taking the server's memory or
slots: large requests in flight per connection, --max-connections.
nbdsrv only: nbdkit 1.32 has neither limit.
"""
import socket
import threading

import os

import nbd

import nbdraw as n
from conftest import BUILD

MiB = 1024 * 1024
BIG = 64 * MiB          # the largest WRITE a client may send (V-12)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM for %d" % pid)


def flood(sock, writes, errors):
    """Send WRITES maximum-size writes back to back, then read every
    reply; record any non-zero error."""
    payload = bytes(BIG)
    try:
        with n.Client(sock, timeout=120) as c:
            c.handshake()
            for i in range(writes):
                c.send_request(n.CMD_WRITE, offset=0, length=BIG,
                               payload=payload)
            for _ in range(writes):
                errors.append(c.read_reply().error)
    except Exception as e:          # reported by the test's assertion
        errors.append(repr(e))


def test_big_writes_hold_bounded_memory(server):
    """Three clients each pipeline six 64 MiB writes at a server with
    16 workers per connection.  Without a bound each connection would
    hold up to 16 x 64 MiB of buffers; nbdsrv holds at most two large
    buffers per connection, so peak RSS stays under 3 x 2 x 64 MiB plus
    a fixed allowance.  The plugin's writes are slow, so that without
    the bound every worker would hold a buffer at once."""
    slow = os.path.join(BUILD, "tests", "plugins", "nbdkit-slow-plugin.so")
    srv = server(slow, "delay-ms=2000", "--threads=16")
    base = rss_kib(srv.pid)
    errors = []
    threads = [threading.Thread(target=flood, args=(srv.sock, 6, errors))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == [0] * 18
    grown_mib = (rss_kib(srv.pid) - base) / 1024
    assert grown_mib < 3 * 2 * 64 + 64, grown_mib
    # The server is still fine for an ordinary client.
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"x" * 4096, 0)
    h.shutdown()


def test_max_connections(server):
    """The client past --max-connections is closed at once; once a
    client leaves, a new one is served."""
    srv = server("memory", "size=1M", "--max-connections=2")
    held = []
    for _ in range(2):
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        held.append(h)
    extra = socket.socket(socket.AF_UNIX)
    extra.settimeout(30)
    extra.connect(srv.sock)
    assert extra.recv(18) == b"", "the third client was served"
    extra.close()
    held.pop().shutdown()
    h = nbd.NBD()
    for _ in range(100):            # the server notices the close soon
        try:
            h.connect_uri(srv.uri)
            break
        except nbd.Error:
            h = nbd.NBD()
    assert h.get_size() == MiB
    h.shutdown()
    for h in held:
        h.shutdown()


def test_max_connections_bad_value():
    import subprocess
    from conftest import NBDSRV
    p = subprocess.run([NBDSRV, "--max-connections=x", "memory", "1M"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30)
    assert p.returncode == 1
    assert b"--max-connections" in p.stderr
    assert len(p.stderr.decode().strip().splitlines()) == 1


def test_sigterm_with_a_stuck_plugin(server, tmp_path):
    """A plugin call that never returns cannot hold shutdown forever:
    the client is cut after a grace period, and when the call still does
    not return the server exits with status 1 and says why."""
    pidfile = tmp_path / "pread.pid"
    srv = server("eval", "get_size=echo 1M",
                 "pread=echo $$ > %s; exec sleep 600" % pidfile)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    buf = nbd.Buffer(512)
    h.aio_pread(buf, 0)
    try:
        for _ in range(1000):           # until the script runs
            if pidfile.exists() and pidfile.read_text().strip():
                break
            h.poll(10)
        assert pidfile.exists(), "the plugin's pread never started"
        srv.proc.send_signal(15)
        assert srv.proc.wait(120) == 1
        err = srv.proc.stderr.read().decode()
        assert "still busy in the plugin" in err, err
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), 9)
            except (ProcessLookupError, ValueError):
                pass
