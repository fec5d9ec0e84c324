"""Large READs from the file plugin spliced from the file to the socket
(common/include/read-source.h, server/reply-splice.c), and every case
where the server must copy instead.

Each test counts the server's splice calls with strace attached to its
PID: a test of the spliced path proves the splice happened, a test of a
fallback proves it did not, and both check the bytes the client got.
Where Debian's nbdkit-file can serve the same request, the client must
see the same thing from both.
"""
import errno
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

import nbdraw
from util import nbd, wait_accepting

MIB = 1 << 20
# Odd, so the last page is partial and EOF-adjacent reads end mid-page.
SIZE = 3 * MIB + 12345
STRACE_TIMEOUT = 20

# Reads the spliced path must answer right: odd offsets and lengths,
# one byte past a page, ranges ending at EOF, and one larger than the
# server's 1 MiB pipe, which takes several rounds.
RANGES = [(0, MIB), (1, MIB - 1), (12345, 777777), (4095, 65537),
          (SIZE - 65536, 65536), (SIZE - 100001, 100001),
          (SIZE - 2 * MIB - 3, 2 * MIB + 3), (0, SIZE)]


def fs_type(path):
    path = os.path.realpath(path)
    best, kind = "", None
    with open("/proc/mounts") as f:
        for line in f:
            mnt, typ = line.split()[1:3]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) \
                    and len(mnt) >= len(best):
                best, kind = mnt, typ
    return kind


@pytest.fixture(params=["disk", "tmpfs"])
def fsdir(request, tmp_path):
    """A directory on the disk (page-cached) or on a tmpfs."""
    if request.param == "disk":
        d = tmp_path / "data"
        d.mkdir()
        if fs_type(str(d)) == "tmpfs":
            pytest.skip("the temporary directory is itself a tmpfs")
        yield str(d)
        return
    if fs_type("/dev/shm") != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs")
    d = "/dev/shm/nbdsrv-zc-%d-%s" % (os.getpid(), tmp_path.name)
    os.makedirs(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def random_file(path, size=SIZE, seed=1):
    data = random.Random(seed).randbytes(size)
    with open(path, "wb") as f:
        f.write(data)
    return data


class Strace:
    """strace attached to a running server, logging splice and sendfile
    calls of all its threads; stopped by its own PID."""

    def __init__(self, pid, log, inject=()):
        self.log = log
        self.proc = subprocess.Popen(
            ["strace", "-f", "-qq", "-e", "trace=splice,sendfile",
             *inject, "-o", log, "-p", str(pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        deadline = time.monotonic() + STRACE_TIMEOUT
        while not self._attached(pid):
            assert self.proc.poll() is None, \
                "strace could not attach: %s" % self.proc.stderr.read()
            assert time.monotonic() < deadline, "strace never attached"
            time.sleep(0.01)

    def _attached(self, pid):
        """Every thread of PID is traced by our strace."""
        try:
            tasks = os.listdir("/proc/%d/task" % pid)
            for t in tasks:
                with open("/proc/%d/task/%s/status" % (pid, t)) as f:
                    line = [x for x in f if x.startswith("TracerPid:")][0]
                if int(line.split()[1]) != self.proc.pid:
                    return False
        except (OSError, IndexError):
            return False
        return True

    def stop(self):
        """Detach; return the logged lines."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(STRACE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        with open(self.log) as f:
            return f.read().splitlines()


def count_calls(lines):
    """(splices from a file into a pipe, splices out to the socket,
    sendfile calls), each counting only calls that moved bytes."""
    into = out = sendfile = 0
    for line in lines:
        if "= -1" in line or line.rstrip().endswith("= 0"):
            continue
        if " splice(" in line:
            # splice(fd_in, off_in, ...): a file has an offset, a pipe NULL.
            if line.split("splice(")[1].split(",")[1].strip() == "NULL":
                out += 1
            else:
                into += 1
        elif " sendfile(" in line:
            sendfile += 1
    return into, out, sendfile


@pytest.fixture
def traced(tmp_path):
    """traced(srv): strace attached to SRV; call .stop() for its log."""
    started = []

    def attach(srv, inject=()):
        s = Strace(srv.pid, str(tmp_path / ("strace%d" % len(started))),
                   inject)
        started.append(s)
        return s

    yield attach
    for s in started:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGINT)
            s.proc.wait(STRACE_TIMEOUT)


def raw_client(srv, shape):
    c = nbdraw.Client(srv.sock)
    c.handshake(structured=shape == "structured",
                extended=shape == "extended")
    return c


def check_read(c, data, off, n, shape, flags=0):
    r = c.request(nbdraw.CMD_READ, flags=flags, offset=off, length=n)
    assert r.error == 0, r
    assert r.data == data[off:off + n], "wrong bytes at %d+%d" % (off, n)
    if shape == "simple":
        assert r.simple
    else:
        # No holes in this file: one data chunk, as nbdkit sends.
        assert [c.type for c in r.chunks] == [nbdraw.REPLY_TYPE_OFFSET_DATA]
    return r


@pytest.mark.parametrize("shape", ["simple", "structured", "extended"])
def test_spliced_reads_right_bytes(server, traced, fsdir, shape):
    path = os.path.join(fsdir, "disk.img")
    data = random_file(path)
    srv = server("file", "file=" + path)
    wait_accepting(srv)
    st = traced(srv)
    with raw_client(srv, shape) as c:
        for off, n in RANGES:
            check_read(c, data, off, n, shape)
        # Small reads are copied, and still right.
        for off, n in [(0, 1), (SIZE - 1, 1), (70000, 4096)]:
            check_read(c, data, off, n, shape)
        c.disconnect()
    into, out, sendfile = count_calls(st.stop())
    # Every large read went out by splice, and nothing else did: the
    # bound is the rounds the largest read can take in a 64 KiB pipe.
    assert out >= len(RANGES), (into, out)
    assert into >= len(RANGES) and into <= 4 * SIZE // 65536, (into, out)
    assert sendfile == 0


@pytest.mark.parametrize("shape", ["simple", "structured"])
def test_reads_match_nbdkit(server, fsdir, shape):
    """Debian's nbdkit-file answers the same reads the same way."""
    path = os.path.join(fsdir, "disk.img")
    data = random_file(path)
    for impl in ("nbdsrv", "nbdkit"):
        srv = server("-r", "file", "file=" + path, impl=impl)
        wait_accepting(srv)
        with raw_client(srv, shape) as c:
            for off, n in RANGES:
                check_read(c, data, off, n, shape)
            c.disconnect()


@pytest.mark.parametrize("shape", ["simple", "structured", "extended"])
def test_parallel_reads_one_connection(server, traced, fsdir, shape):
    """Many large reads in flight on one connection: each reply arrives
    whole (nbdraw fails on a chunk or bytes of another reply inside
    one), with its own bytes."""
    path = os.path.join(fsdir, "disk.img")
    data = random_file(path)
    srv = server("-t", "8", "file", "file=" + path)
    wait_accepting(srv)
    st = traced(srv)
    rnd = random.Random(7)
    with raw_client(srv, shape) as c:
        for _ in range(3):
            want = {}
            for _ in range(24):
                n = rnd.randint(64 * 1024, 2 * MIB)
                off = rnd.randrange(SIZE - n + 1)
                want[c.send_request(nbdraw.CMD_READ, offset=off,
                                    length=n)] = (off, n)
            for _ in range(len(want)):
                r = c.read_reply()
                off, n = want.pop(r.cookie)
                assert r.error == 0 and r.data == data[off:off + n], \
                    "reply %d: wrong bytes" % r.cookie
        c.disconnect()
    into, out, _ = count_calls(st.stop())
    assert out >= 72, (into, out)


def test_libnbd_parallel(server, traced, fsdir):
    """libnbd with 16 reads in flight, as fio and qemu use it."""
    path = os.path.join(fsdir, "disk.img")
    data = random_file(path)
    srv = server("file", "file=" + path)
    wait_accepting(srv)
    st = traced(srv)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    bufs = []
    for i in range(16):
        off = (i * 181081) % (SIZE - MIB)
        buf = nbd.Buffer(MIB)
        bufs.append((off, buf, h.aio_pread(buf, off)))
    for _ in range(10000):
        if h.aio_in_flight() == 0:
            break
        h.poll(1000)
    assert h.aio_in_flight() == 0
    for off, buf, _ in bufs:
        assert buf.to_bytearray() == data[off:off + MIB]
    h.shutdown()
    into, out, _ = count_calls(st.stop())
    assert out >= 16


@pytest.mark.parametrize("impl", ["nbdsrv", "nbdkit"])
def test_truncated_file(server, fsdir, impl):
    """A file cut short under the server: reads past the new end fail
    with EIO, and the connection goes on serving the rest."""
    path = os.path.join(fsdir, "disk.img")
    data = random_file(path)
    srv = server("file", "file=" + path, impl=impl)
    wait_accepting(srv)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    assert h.pread(MIB, 2 * MIB) == data[2 * MIB:3 * MIB]
    os.truncate(path, MIB + 100)
    for off in (2 * MIB, MIB):          # past the end, across it
        with pytest.raises(nbd.Error) as e:
            h.pread(MIB, off)
        assert e.value.errnum == errno.EIO
    assert h.pread(MIB, 0) == data[:MIB]
    assert h.pread(100, MIB) == data[MIB:MIB + 100]
    h.shutdown()


def test_truncated_file_error_message(server, fsdir):
    """The ERROR chunk says what went wrong, as .pread reports it."""
    path = os.path.join(fsdir, "disk.img")
    random_file(path)
    srv = server("file", "file=" + path)
    wait_accepting(srv)
    with raw_client(srv, "structured") as c:
        os.truncate(path, MIB)
        r = c.request(nbdraw.CMD_READ, offset=2 * MIB, length=MIB)
        assert r.error == nbdraw.EIO
        assert b"end of file" in r.chunks[0].message
        r = c.request(nbdraw.CMD_READ, offset=0, length=MIB)
        assert r.error == 0
        c.disconnect()


def fallback_reads(srv, data, connect=None):
    h = nbd.NBD()
    if connect:
        connect(h)
    else:
        h.connect_uri(srv.uri)
    for off, n in RANGES:
        assert h.pread(n, off) == data[off:off + n]
    h.shutdown()


def test_filter_falls_back(server, traced, fsdir):
    """With a filter stacked the data is copied, and still right; the
    same server without the filter splices (the control)."""
    path = os.path.join(fsdir, "disk.img")
    data = random_file(path)
    for args, spliced in ((["--filter=nofilter"], False), ([], True)):
        srv = server(*args, "file", "file=" + path)
        wait_accepting(srv)
        st = traced(srv)
        fallback_reads(srv, data)
        into, out, _ = count_calls(st.stop())
        assert (out > 0) == spliced, (args, into, out)


def test_cache_none_copies(server, traced, fsdir):
    """cache=none drops the pages after each read, which only .pread
    does: no splice."""
    path = os.path.join(fsdir, "disk.img")
    data = random_file(path)
    srv = server("file", "file=" + path, "cache=none")
    wait_accepting(srv)
    st = traced(srv)
    fallback_reads(srv, data)
    assert count_calls(st.stop()) == (0, 0, 0)


def test_sparse_file_keeps_holes(server, traced, fsdir):
    """A sparse file read with structured replies still gets its zero
    runs as OFFSET_HOLE chunks (copied, so the server sees the zeroes);
    with DF it is one data chunk, spliced."""
    path = os.path.join(fsdir, "sparse.img")
    blob = random.Random(3).randbytes(MIB)
    with open(path, "wb") as f:
        f.truncate(4 * MIB)
        f.seek(MIB)
        f.write(blob)
    data = bytes(MIB) + blob + bytes(2 * MIB)
    srv = server("file", "file=" + path)
    wait_accepting(srv)
    st = traced(srv)
    with raw_client(srv, "structured") as c:
        r = c.request(nbdraw.CMD_READ, offset=0, length=4 * MIB)
        assert r.data == data
        assert nbdraw.REPLY_TYPE_OFFSET_HOLE in [k.type for k in r.chunks]
        first = count_calls(st.stop())
        st = traced(srv)
        r = c.request(nbdraw.CMD_READ, flags=nbdraw.CMD_FLAG_DF,
                      offset=0, length=4 * MIB)
        assert r.data == data
        assert [k.type for k in r.chunks] == [nbdraw.REPLY_TYPE_OFFSET_DATA]
        c.disconnect()
    assert first[1] == 0
    assert count_calls(st.stop())[1] > 0


def test_sparse_file_data_region_spliced(server, traced, tmp_path):
    """On a disk file system SEEK_HOLE shows a range of a sparse file to
    be all data, so that read is spliced (tmpfs is not asked)."""
    d = tmp_path / "data"
    d.mkdir()
    if fs_type(str(d)) == "tmpfs":
        pytest.skip("the temporary directory is a tmpfs")
    path = str(d / "sparse.img")
    blob = random.Random(4).randbytes(2 * MIB)
    with open(path, "wb") as f:
        f.truncate(8 * MIB)
        f.seek(2 * MIB)
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    srv = server("file", "file=" + path)
    wait_accepting(srv)
    st = traced(srv)
    with raw_client(srv, "structured") as c:
        r = c.request(nbdraw.CMD_READ, offset=2 * MIB + 4096, length=MIB)
        assert r.data == blob[4096:4096 + MIB]
        assert [k.type for k in r.chunks] == [nbdraw.REPLY_TYPE_OFFSET_DATA]
        c.disconnect()
    assert count_calls(st.stop())[1] > 0


def test_stdin_socket(fsdir, tmp_path):
    """-s on a socket pair: the header goes by write on stdout, the data
    by splice, in order."""
    from conftest import (BINARIES, SANITIZER_MARKERS, plugin_path,
                          server_env)
    path = os.path.join(fsdir, "disk.img")
    data = random_file(path)
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([BINARIES["nbdsrv"], "-s", plugin_path("file"),
                             "file=" + path], stdin=theirs, stdout=theirs,
                            stderr=subprocess.PIPE, env=server_env("nbdsrv"))
    theirs.close()
    try:
        st = Strace(proc.pid, str(tmp_path / "strace"))
        h = nbd.NBD()
        h.connect_socket(ours.detach())
        for off, n in RANGES:
            assert h.pread(n, off) == data[off:off + n]
        lines = st.stop()
        h.shutdown()
        assert proc.wait(STRACE_TIMEOUT) == 0
        err = proc.stderr.read().decode(errors="replace")
        assert not any(m in err for m in SANITIZER_MARKERS), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert count_calls(lines)[1] >= len(RANGES)


def test_tcp(fsdir, tmp_path):
    """Over TCP on 127.0.0.1 (the header held back with MSG_MORE), with
    reads in flight in parallel: right bytes, spliced."""
    from conftest import BINARIES, SANITIZER_MARKERS, server_env
    path = os.path.join(fsdir, "disk.img")
    data = random_file(path)
    proc = subprocess.Popen(
        [BINARIES["nbdsrv"], "-f", "-i", "127.0.0.1", "-p", "0",
         "--print-uri", "file", "file=" + path],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=server_env("nbdsrv"))
    try:
        uri = proc.stdout.readline().strip()
        assert uri.startswith("nbd://127.0.0.1:"), uri
        st = Strace(proc.pid, str(tmp_path / "strace"))
        h = nbd.NBD()
        h.connect_uri(uri)
        for off, n in RANGES:
            assert h.pread(n, off) == data[off:off + n]
        bufs = []
        for i in range(16):
            off = (i * 233333) % (SIZE - 2 * MIB)
            buf = nbd.Buffer(2 * MIB)
            bufs.append((off, buf, h.aio_pread(buf, off)))
        for _ in range(10000):
            if h.aio_in_flight() == 0:
                break
            h.poll(1000)
        for off, buf, _ in bufs:
            assert buf.to_bytearray() == data[off:off + 2 * MIB]
        lines = st.stop()
        h.shutdown()
    finally:
        proc.terminate()
        proc.wait(STRACE_TIMEOUT)
    err = proc.stderr.read()
    assert not any(m in err for m in SANITIZER_MARKERS), err
    assert count_calls(lines)[1] >= len(RANGES) + 16


class PipePair:
    """The socket calls nbdraw.Client makes, over two pipes: what a
    parent gives `nbdsrv -s` as stdin and stdout when it has no socket.
    Reads wait at most STRACE_TIMEOUT seconds."""

    def __init__(self, rfd, wfd):
        self.rfd, self.wfd = rfd, wfd

    def recv(self, n):
        ready, _, _ = select.select([self.rfd], [], [], STRACE_TIMEOUT)
        if not ready:
            raise socket.timeout("no reply from the server")
        return os.read(self.rfd, n)

    def sendall(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view):]

    def close(self):
        os.close(self.rfd)
        os.close(self.wfd)


class PipeClient(nbdraw.Client):
    """nbdraw's client on a PipePair instead of a Unix socket."""

    def __init__(self, rfd, wfd):
        self.sock = PipePair(rfd, wfd)
        self.gflags = self.size = self.eflags = None
        self.structured = self.extended = False
        self.pending = {}


def test_stdin_pipes_copy(tmp_path):
    """-s on two pipes (not a socket): replies are copied, not spliced,
    and right."""
    from conftest import BINARIES, SANITIZER_MARKERS, plugin_path
    from conftest import server_env
    path = str(tmp_path / "disk.img")
    data = random_file(path)
    to_srv_r, to_srv_w = os.pipe()
    from_srv_r, from_srv_w = os.pipe()
    proc = subprocess.Popen([BINARIES["nbdsrv"], "-s", plugin_path("file"),
                             "file=" + path], stdin=to_srv_r,
                            stdout=from_srv_w, stderr=subprocess.PIPE,
                            env=server_env("nbdsrv"))
    os.close(to_srv_r)
    os.close(from_srv_w)
    c = PipeClient(from_srv_r, to_srv_w)
    try:
        st = Strace(proc.pid, str(tmp_path / "strace"))
        c.handshake(structured=True)
        for off, n in RANGES:
            check_read(c, data, off, n, "structured")
        lines = st.stop()
        c.disconnect()
        c.close()
        assert proc.wait(STRACE_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode(errors="replace")
    assert not any(m in err for m in SANITIZER_MARKERS), err
    assert count_calls(lines) == (0, 0, 0)


# ----------------------------------------------- failures, injected
# strace makes chosen splice calls fail (-e inject), so the two failure
# paths are reached on purpose: before any byte of the reply left (the
# server reads the range with .pread instead) and after (the connection
# is cut, since half a reply cannot be taken back).

def tmpfs_only():
    if fs_type("/dev/shm") != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs")
    d = "/dev/shm/nbdsrv-zc-inject-%d" % os.getpid()
    os.makedirs(d, exist_ok=True)
    return d


@pytest.mark.parametrize("shape", ["simple", "structured"])
def test_splice_failing_from_the_start_falls_back(server, traced,
                                                  tmp_path, shape):
    """Every splice fails: each read is copied instead, right, and the
    connection goes on."""
    path = str(tmp_path / "disk.img")
    data = random_file(path)
    srv = server("file", "file=" + path)
    wait_accepting(srv)
    st = traced(srv, ["-e", "inject=splice:error=EIO"])
    with raw_client(srv, shape) as c:
        for off, n in RANGES:
            check_read(c, data, off, n, shape)
        c.disconnect()
    lines = st.stop()
    assert any("(INJECTED)" in line for line in lines), lines[:5]
    assert count_calls(lines) == (0, 0, 0)


def test_file_failing_mid_reply_cuts_the_connection(server, traced):
    """A read larger than the pipe goes in rounds; when the file fails
    in the second round the header and the first pipeful have left, so
    the server closes that connection (and says why) and serves the
    next one.  tmpfs has 4 KiB pages, so the pipe (at most 1 MiB) is
    full long before the 8 MiB read: per thread, splice calls go fill,
    fill (EAGAIN: full), drain, fill: the 4th is made to fail."""
    d = tmpfs_only()
    try:
        path = os.path.join(d, "disk.img")
        data = random_file(path, 9 * MIB)
        srv = server("-t", "1", "file", "file=" + path)
        wait_accepting(srv)
        st = traced(srv, ["-e", "inject=splice:error=EIO:when=4"])
        c = nbdraw.Client(srv.sock)
        c.handshake()
        c.send_request(nbdraw.CMD_READ, offset=0, length=8 * MIB)
        magic, error = struct.unpack(">II", c.recv_exact(8))
        assert (magic, error) == (nbdraw.SIMPLE_REPLY_MAGIC, 0)
        c.recv_exact(8)                         # the cookie
        with pytest.raises(nbdraw.Disconnected):
            c.recv_exact(8 * MIB)
        c.close()
        lines = st.stop()
        injected = [x for x in lines if "(INJECTED)" in x]
        assert len(injected) == 1 and \
            injected[0].split("splice(")[1].split(",")[1].strip() != \
            "NULL", "not the second round's fill: %s" % lines
        with raw_client(srv, "structured") as c:
            check_read(c, data, 0, 2 * MIB, "structured")
            c.disconnect()
        assert "failed after its reply had started" in srv.stderr_text()
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from test_tls import Pki
    return Pki(str(tmp_path_factory.mktemp("pki")))


def test_tls_falls_back(server, traced, fsdir, pki):
    """Over TLS the bytes are encrypted in user space: copied, never
    spliced, and right."""
    path = os.path.join(fsdir, "disk.img")
    data = random_file(path)
    srv = server("--tls=require", "--tls-certificates=%s" % pki.server,
                 "file", "file=" + path)
    wait_accepting(srv)
    st = traced(srv)

    def connect(h):
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_certificates(pki.clients["good"])
        h.connect_unix(srv.sock)

    fallback_reads(srv, data, connect)
    assert count_calls(st.stop()) == (0, 0, 0)


def test_metrics_count_spliced_reads(server, traced, fsdir, tmp_path):
    """--metrics counts spliced reads as it counts copied ones: the
    requests, the bytes of the successful ones, and the error."""
    from test_metrics import scrape, value
    path = os.path.join(fsdir, "disk.img")
    random_file(path)
    where = "unix:" + str(tmp_path / "metrics")
    srv = server("--metrics=" + where, "file", "file=" + path)
    wait_accepting(srv)
    st = traced(srv)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    for off in (0, MIB, 12345):
        h.pread(MIB, off)
    os.truncate(path, MIB)
    with pytest.raises(nbd.Error):
        h.pread(MIB, 2 * MIB)
    h.shutdown()
    assert count_calls(st.stop())[1] >= 3
    m = scrape(where)
    assert value(m, "nbdsrv_requests_total", command="read",
                 export="") == 4
    assert value(m, "nbdsrv_bytes_total", command="read",
                 export="") == 3 * MIB
    assert value(m, "nbdsrv_request_errors_total", error="EIO") == 1
