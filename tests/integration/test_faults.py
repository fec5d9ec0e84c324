"""Faults the server must survive.

Each test breaks something on purpose (a client killed mid-request, a
client that never reads, a plugin that fails or hangs, a full disk, a
signal with requests in flight, a flood of maximum-size writes, a storm
of connections) and then checks that the server is alive, that other
clients are served, and that memory and file descriptors are bounded.

Memory is read from /proc/PID/status: VmHWM is the peak resident size,
so no sampling race decides a result.  Limits are generous multiples of
what the design allows (workers x buffer size), never timings.  Every
wait has a deadline that only guards against a hang.
"""
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import nbd
import pytest

import nbdraw as n
from conftest import BUILD, SANITIZER_ENV, plugin_path
from util import SH_PLUGIN, write_script

MiB = 1024 * 1024
DEBIAN_FILE = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-file-plugin.so"

# Hang protection only: the point where a wait is declared stuck.
HANG = 120

# ASan keeps freed blocks in a quarantine (256 MiB by default), which
# would hide whether the server gives memory back; keep it small.
SMALL_QUARANTINE = dict(
    os.environ,
    ASAN_OPTIONS=SANITIZER_ENV["ASAN_OPTIONS"] + ":quarantine_size_mb=8")


# ------------------------------------------------------------ helpers

def status_kib(pid, field):
    """A "Field:  N kB" line of /proc/PID/status, in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def nthreads(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise KeyError("Threads")


def nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def wait_for(pred, what):
    """Poll PRED until true; fail after HANG seconds."""
    deadline = time.monotonic() + HANG
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail("still waiting after %d s for %s" % (HANG, what))
        time.sleep(0.02)


def nconnections(pid):
    """Connected Unix sockets the process holds: its client
    connections (the listening socket is not connected)."""
    states = {}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            states[fields[6]] = fields[5]       # inode -> St (03: connected)
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except FileNotFoundError:
            continue
        if target.startswith("socket:[") and states.get(target[8:-1]) == "03":
            n += 1
    return n


def settled_fds(srv):
    """The server's fd count with no connection open.  start_server's
    probe connection may still be open at first: wait for it to go."""
    wait_for(lambda: nconnections(srv.pid) == 0,
             "the start-up probe connection to close")
    return nfds(srv.pid)


def settled_threads(srv):
    """The server's thread count when idle.  The start-up probe can
    connect before the server has started the threads that accept
    clients, so serve one client first and count once it has gone."""
    h = connect(srv)
    h.shutdown()
    wait_for(lambda: nconnections(srv.pid) == 0,
             "the warm-up connection to close")
    return nthreads(srv.pid)


def wait_fds(srv, baseline):
    """The server's open fds return to BASELINE (connections freed)."""
    wait_for(lambda: nfds(srv.pid) <= baseline,
             "the server's fds to return to %d (now %d: %s)"
             % (baseline, nfds(srv.pid),
                sorted(os.listdir("/proc/%d/fd" % srv.pid))))


def connect(srv, export=""):
    h = nbd.NBD()
    h.connect_uri(srv.uri_for(export) if export else srv.uri)
    return h


def check_other_client(srv, offset=0):
    """A fresh client writes, reads back and disconnects cleanly."""
    data = os.urandom(65536)
    h = connect(srv)
    h.pwrite(data, offset)
    assert h.pread(len(data), offset) == data
    h.shutdown()


def raw_client(srv, timeout=HANG):
    return n.Client(srv.sock, timeout=timeout).handshake()


# --------------------------------------------------- client faults

KILLED_WRITER = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.recv(18, socket.MSG_WAITALL)                   # greeting
s.sendall(struct.pack(">I", 3))                  # fixed newstyle, no zeroes
s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, 0))   # EXPORT_NAME ""
s.recv(10, socket.MSG_WAITALL)                   # size and flags
# WRITE of 1 MiB at offset 0, with only the first 300 KiB of payload.
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 1 << 20))
s.sendall(b"\xab" * (300 * 1024))
print("sent", flush=True)
time.sleep(600)
"""


def test_client_killed_mid_write_payload(server):
    """SIGKILL a client half way through a WRITE payload: the server
    drops that connection without running the write (R-10), stays up,
    serves others and frees the connection's fd."""
    srv = server("memory", "size=4M")
    baseline = settled_fds(srv)
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, srv.sock],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        # The child had its EXPORT_NAME answered: the server holds it.
        assert child.stdout.readline() == b"sent\n"
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    wait_fds(srv, baseline)
    assert srv.alive()
    h = connect(srv)
    assert h.pread(1 << 20, 0) == bytes(1 << 20), "a partial write ran"
    h.shutdown()
    check_other_client(srv)


def test_client_that_never_reads_replies(server):
    """A client pipelines many 1 MiB READs and never reads a reply.  The
    server stops reading from it once its workers are stuck on the
    socket, so memory stays near workers x 1 MiB; other clients are
    served meanwhile; closing the stuck client frees everything."""
    threads = 4
    srv = server("-t", str(threads), "memory", "size=1G",
                 env=SMALL_QUARANTINE)
    base_fds = settled_fds(srv)
    base_rss = status_kib(srv.pid, "VmRSS")
    c = raw_client(srv)
    c.sock.setblocking(False)
    hdr = struct.Struct(">IHHQQI")
    sent = 0
    for i in range(20000):          # 20 GB of replies if all were read
        req = hdr.pack(n.REQUEST_MAGIC, 0, n.CMD_READ, i, (i % 1024) * MiB,
                       MiB)
        try:
            if c.sock.send(req) != len(req):
                break               # a partial header: stop here
        except BlockingIOError:
            break
        sent += 1
    # Let the server run into the full socket; then it must be stuck,
    # not buffering.  Other clients work while it is.
    check_other_client(srv)
    time.sleep(0.5)
    check_other_client(srv)
    peak_mib = (status_kib(srv.pid, "VmHWM") - base_rss) / 1024
    bound = threads * 1 + 64        # buffers, plus ASan/allocator slack
    assert peak_mib < bound, (
        "server grew by %.0f MiB with %d READs unread (bound %d MiB)"
        % (peak_mib, sent, bound))
    # The stuck connection goes away with the client.
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                      struct.pack("ii", 1, 0))
    c.close()
    wait_fds(srv, base_fds)
    assert srv.alive()
    check_other_client(srv)


# --------------------------------------------------- plugin faults

# Export "hang": pread waits for the file GATE; "error": every data
# call fails with EIO; anything else: a 1 MiB disk in DISK.
SH_FAULTY = r"""#!/bin/sh
dir=%(dir)s
case "$1" in
  thread_model) echo parallel ;;
  open) echo "$3" ;;
  get_size) echo 1048576 ;;
  can_write|can_flush) exit 0 ;;
  pread)
    case "$2" in
      hang)
        touch "$dir/hanging"
        i=0
        while [ ! -e "$dir/gate" ] && [ $i -lt 2400 ]; do
          sleep 0.05; i=$((i+1))
        done ;;
      error) echo "EIO injected failure" >&2; exit 1 ;;
    esac
    dd if="$dir/disk" iflag=skip_bytes,count_bytes skip=$4 count=$3 \
       status=none ;;
  pwrite)
    [ "$2" = error ] && { echo "EIO injected failure" >&2; exit 1; }
    dd of="$dir/disk" oflag=seek_bytes conv=notrunc seek=$4 status=none ;;
  flush) exit 0 ;;
  *) exit 2 ;;
esac
"""


def test_plugin_errors_and_hangs_on_one_connection(server, tmp_path):
    """One connection's plugin calls hang, another's fail with EIO; a
    third connection reads and writes normally throughout, and the hung
    request completes once released."""
    (tmp_path / "disk").write_bytes(bytes(MiB))
    script = write_script(tmp_path, "faulty.sh",
                          SH_FAULTY % {"dir": str(tmp_path)})
    srv = server(SH_PLUGIN, script)

    hung = n.Client(srv.sock, timeout=HANG).handshake(name=b"hang")
    cookie = hung.send_request(n.CMD_READ, offset=0, length=4096)
    wait_for(lambda: (tmp_path / "hanging").exists(),
             "the plugin to start the hung read")

    bad = connect(srv, "error")
    for _ in range(3):
        with pytest.raises(nbd.Error) as exc:
            bad.pread(512, 0)
        assert exc.value.errno == "EIO"
    with pytest.raises(nbd.Error):
        bad.pwrite(b"x" * 512, 0)

    good = connect(srv)
    data = os.urandom(8192)
    good.pwrite(data, 4096)
    assert good.pread(8192, 4096) == data
    good.flush()
    good.shutdown()
    bad.shutdown()

    (tmp_path / "gate").touch()
    reply = hung.read_reply()
    assert reply.cookie == cookie and reply.error == 0
    hung.disconnect()
    hung.close()
    assert srv.alive()


def file_plugin():
    """Our file plugin once it is built, else Debian's nbdkit one."""
    ours = plugin_path("file")
    return ours if os.path.exists(ours) else DEBIAN_FILE


def start_in_tmpfs(tmp_path, mnt, size, extra_args=()):
    """Start nbdsrv in a private mount namespace with a SIZE tmpfs on
    MNT holding a sparse 16 MiB disk.img; return the Server."""
    import conftest
    sock = str(tmp_path / "sock")
    script = ('mount -t tmpfs -o size=%s nbdsrv-test "$1" && '
              'truncate -s 16M "$1/disk.img" && shift && exec "$@"' % size)
    cmd = (["unshare", "-m", "--propagation", "private", "sh", "-c", script,
            "sh", str(mnt), conftest.NBDSRV, "-f", "-U", sock]
           + list(extra_args) + [file_plugin(), str(mnt / "disk.img")])
    env = dict(os.environ, **SANITIZER_ENV)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    srv = conftest.Server("nbdsrv", cmd, sock, proc)
    conftest._unchecked.append(srv)
    try:
        wait_for(lambda: listening(sock) or not srv.alive(),
                 "the server in the mount namespace to listen")
    except BaseException:
        srv.stop()
        raise
    if not srv.alive():
        pytest.skip("cannot mount a tmpfs in a private mount namespace: "
                    + srv.stderr_text())
    return srv


def test_disk_full_gives_enospc(tmp_path):
    """The file plugin on a 4 MiB tmpfs: writing 8 MiB runs out of
    space; the client gets ENOSPC, not a dropped connection; after a
    trim frees space writes succeed again; the server lives on."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    srv = start_in_tmpfs(tmp_path, mnt, "4M")
    try:
        h = connect(srv)
        block = os.urandom(MiB)
        written, failures = [], []
        for i in range(8):
            try:
                h.pwrite(block, i * MiB)
                written.append(i)
            except nbd.Error as e:
                failures.append(e.errno)
        assert failures, "8 MiB fitted on a 4 MiB tmpfs"
        assert set(failures) == {"ENOSPC"}, failures
        assert 1 <= len(written) <= 4
        for i in written:
            assert h.pread(MiB, i * MiB) == block
        if h.can_trim():
            for i in written:
                h.trim(MiB, i * MiB)
            h.pwrite(block, 7 * MiB)
            assert h.pread(MiB, 7 * MiB) == block
        h.shutdown()
        assert srv.alive()
        h2 = connect(srv)
        h2.pread(4096, 0)
        h2.shutdown()
        assert srv.stop() == 0
    finally:
        srv.stop()


# --------------------------------------------------- signals

SH_GATED = r"""#!/bin/sh
dir=%(dir)s
case "$1" in
  thread_model) echo parallel ;;
  get_size) echo 1048576 ;;
  can_write|can_flush) exit 0 ;;
  pread)
    dd if="$dir/disk" iflag=skip_bytes,count_bytes skip=$4 count=$3 \
       status=none ;;
  pwrite)
    touch "$dir/started.$4"
    i=0
    while [ ! -e "$dir/gate" ] && [ $i -lt 2400 ]; do
      sleep 0.05; i=$((i+1))
    done
    dd of="$dir/disk" oflag=seek_bytes conv=notrunc seek=$4 status=none ;;
  flush) exit 0 ;;
  *) exit 2 ;;
esac
"""


def listening(sock):
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(sock)
            return True
        except OSError:
            return False


def test_sigterm_with_writes_in_flight(server, tmp_path):
    """SIGTERM while four writes are inside the plugin: the server stops
    accepting, lets the four finish and reply with success, then exits
    with status 0; the data is on disk."""
    (tmp_path / "disk").write_bytes(bytes(MiB))
    script = write_script(tmp_path, "gated.sh",
                          SH_GATED % {"dir": str(tmp_path)})
    srv = server(SH_PLUGIN, script)
    c = n.Client(srv.sock, timeout=HANG).handshake()
    blocks = {}
    # Larger than 64 KiB, so none is run inline by the reading worker:
    # each gets a worker of its own and all four reach the plugin.
    size = 128 * 1024
    for i in range(4):
        blocks[i * size] = bytes([i + 1]) * size
        c.send_request(n.CMD_WRITE, offset=i * size, length=size,
                       payload=blocks[i * size])
    wait_for(lambda: all((tmp_path / ("started.%d" % o)).exists()
                         for o in blocks), "four writes in the plugin")
    srv.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: not listening(srv.sock), "the server to stop accepting")
    assert srv.alive(), "the server exited with writes in flight"
    (tmp_path / "gate").touch()
    errors = [c.read_reply().error for _ in blocks]
    assert errors == [0, 0, 0, 0]
    assert c.wait_closed()
    c.close()
    srv.proc.wait(HANG)
    assert srv.proc.returncode == 0
    disk = (tmp_path / "disk").read_bytes()
    for off, data in blocks.items():
        assert disk[off:off + len(data)] == data


def test_sigkill_keeps_acknowledged_fua_writes(server, tmp_path):
    """Acknowledged FUA writes on the file plugin survive SIGKILL of the
    server: a new server on the same file reads every one back."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")
    os.truncate(disk, 64 * MiB)
    srv = server(file_plugin(), str(disk))
    h = connect(srv)
    assert h.can_fua()
    rng = __import__("random").Random(1234)
    acked = {}
    for _ in range(200):
        off = rng.randrange(0, 64 * MiB // 4096) * 4096
        data = rng.randbytes(4096)
        h.pwrite(data, off, nbd.CMD_FLAG_FUA)
        acked[off] = data           # later writes to OFF win
    srv.stop(signal.SIGKILL)
    assert srv.proc.returncode == -signal.SIGKILL
    del h

    srv2 = server(file_plugin(), str(disk))
    h2 = connect(srv2)
    for off, data in acked.items():
        assert h2.pread(4096, off) == data, "lost FUA write at %d" % off
    h2.shutdown()


# --------------------------------------------------- load

def test_64mib_write_flood_bounded_memory(server):
    """Six clients each pipeline four 64 MiB WRITEs (the largest
    allowed) at a null disk.  Peak memory stays within clients x
    workers x 64 MiB, and is given back once they leave."""
    clients, per_client, threads = 6, 4, 2
    srv = server("-t", str(threads), "null", "size=1G",
                 env=SMALL_QUARANTINE)
    base_threads = settled_threads(srv)
    base_rss = status_kib(srv.pid, "VmRSS")
    payload = bytes(64 * MiB)
    failures = []

    def flood(k):
        try:
            h = connect(srv)
            cookies = [h.aio_pwrite(payload, (k * per_client + i) * 64 * MiB
                                    % (1024 * MiB))
                       for i in range(per_client)]
            while h.aio_in_flight() > 0:
                h.poll(-1)
            for c in cookies:
                h.aio_command_completed(c)
            h.shutdown()
        except Exception as e:                  # reported below
            failures.append(repr(e))

    workers = [threading.Thread(target=flood, args=(k,))
               for k in range(clients)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(HANG)
    assert not any(t.is_alive() for t in workers), "flood clients hung"
    assert not failures, failures
    peak_mib = (status_kib(srv.pid, "VmHWM") - base_rss) / 1024
    bound = clients * threads * 64 + 128
    assert peak_mib < bound, (
        "peak grew by %.0f MiB, bound %d MiB" % (peak_mib, bound))
    # Workers exit with their connections and free their buffers.
    wait_for(lambda: nthreads(srv.pid) <= base_threads,
             "worker threads to exit")
    rss_mib = (status_kib(srv.pid, "VmRSS") - base_rss) / 1024
    assert rss_mib < 128, "%.0f MiB still held after the flood" % rss_mib
    assert srv.alive()


def test_thousands_of_connections_no_fd_leak(server):
    """2000 connections, closed at every stage (right after connect, mid
    greeting, mid option, after GO, after a request, with DISC): the
    server's fds and threads return to their baseline."""
    srv = server("memory", "size=1M")
    base_threads = settled_threads(srv)
    base_fds = settled_fds(srv)
    opt = struct.pack(">QII", n.IHAVEOPT, n.OPT_GO, 6) + bytes(6)
    req = struct.pack(">IHHQQI", n.REQUEST_MAGIC, 0, n.CMD_READ, 1, 0, 512)
    disc = struct.pack(">IHHQQI", n.REQUEST_MAGIC, 0, n.CMD_DISC, 2, 0, 0)
    for batch in range(40):
        socks = []
        for i in range(50):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(HANG)
            s.connect(srv.sock)
            socks.append(s)
            stage = (batch * 50 + i) % 6
            if stage == 0:
                continue
            s.recv(18, socket.MSG_WAITALL)
            if stage == 1:
                continue
            s.sendall(struct.pack(">I", 3) + opt[:10])
            if stage == 2:
                continue
            s.sendall(opt[10:])
            if stage == 3:
                continue
            s.sendall(req)
            if stage == 4:
                continue
            s.sendall(disc)
        for s in socks:
            s.close()
    wait_fds(srv, base_fds)
    wait_for(lambda: nthreads(srv.pid) <= base_threads,
             "connection threads to exit")
    check_other_client(srv)
    assert srv.alive()
    assert srv.stop() == 0
