"""Filters of group C (delay, error, exitlast, exitwhen, exportname, ip,
limit, log, pause, rate, retry, retry-request, stats, tls-fallback).

Each test runs one command line under every implementation in IMPLS and
checks what real clients see: Debian's nbdkit with its own filter
("nbdkit"), Debian's nbdkit with our filter .so ("ours"), and, once the
server's filter stack is on main, nbdsrv with our filter ("nbdsrv").
Timing is only ever checked as a lower bound (a delay cannot end
early), never as an upper bound.
"""
import errno
import os
import socket
import subprocess
import time

import nbd
import pytest

from conftest import filter_path
from util import connect, errno_of, export_flags, write_script

IMPLS = [
    "nbdkit",
    pytest.param("ours", marks=pytest.mark.nbdkit_plugin),
]


@pytest.fixture(params=IMPLS)
def impl(request):
    """Overrides conftest's: the three ways of running a filter."""
    return request.param


def start(server, impl, filters, *args, env=None):
    """Start IMPL with FILTERS (names, first closest to the client) over
    the plugin command line ARGS."""
    if impl == "ours":
        fargs = ["--filter=" + filter_path(f) for f in filters]
        impl = "nbdkit"
    else:
        fargs = ["--filter=" + f for f in filters]
    return server(*fargs, *args, impl=impl, env=env)


def wait_exit(srv, timeout=30):
    """Wait (bounded) for SRV to exit by itself; return its status."""
    try:
        return srv.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("%s did not exit within %ds" % (srv.impl, timeout))


def run_server(impl, filters, *args):
    """Run a server command line that must fail at startup; return
    (status, stderr)."""
    if impl == "ours":
        fargs = ["--filter=" + filter_path(f) for f in filters]
        binary = "/usr/bin/nbdkit"
    else:
        fargs = ["--filter=" + f for f in filters]
        binary = "/usr/bin/nbdkit" if impl == "nbdkit" else \
            os.path.join(os.path.dirname(filter_path("x")), "..", "nbdsrv")
    p = subprocess.run([binary, "-f", "-U", "/nonexistent/sock"] + fargs
                       + list(args), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stderr


# ---------------------------------------------------------------- delay

def test_delay_read_waits(server, impl):
    srv = start(server, impl, ["delay"], "memory", "1M", "rdelay=300ms",
                "delay-write=1")
    h = connect(srv)
    t0 = time.monotonic()
    h.pread(512, 0)
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    h.pwrite(b"x" * 512, 0)
    assert time.monotonic() - t0 >= 1.0
    assert h.pread(1, 0) == b"x"
    h.shutdown()


def test_delay_fast_zero_fails_at_once(server, impl):
    srv = start(server, impl, ["delay"], "memory", "1M", "delay-zero=1",
                "delay-fast-zero=false")
    h = connect(srv)
    assert h.can_fast_zero()
    e = errno_of(lambda: h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO))
    assert e == errno.ENOTSUP
    t0 = time.monotonic()
    h.zero(4096, 0)
    assert time.monotonic() - t0 >= 1.0
    h.shutdown()


def test_delay_open(server, impl):
    srv = start(server, impl, ["delay"], "memory", "1M", "delay-open=1")
    t0 = time.monotonic()
    h = connect(srv)
    assert time.monotonic() - t0 >= 1.0
    assert h.get_size() == 1 << 20
    h.shutdown()


@pytest.mark.parametrize("value", ["1.5", "abc", "-1", "abcms"])
def test_delay_bad_value(impl, value):
    rc, err = run_server(impl, ["delay"], "memory", "1M", "rdelay=" + value)
    assert rc == 1
    assert "rdelay" in err


# ---------------------------------------------------------------- error

def test_error_per_command(server, impl):
    srv = start(server, impl, ["error"], "memory", "1M", "error=ENOSPC",
                "error-pwrite-rate=100%", "error-zero-rate=1")
    h = connect(srv)
    assert h.pread(512, 0) == bytes(512)
    assert errno_of(lambda: h.pwrite(b"a" * 512, 0)) == errno.ENOSPC
    assert errno_of(lambda: h.zero(512, 0)) == errno.ENOSPC
    h.trim(512, 0)
    h.flush()
    h.shutdown()
    assert "injecting ENOSPC error into pwrite" in srv.stderr_text()


def test_error_file_trigger(server, impl, tmp_path):
    trigger = tmp_path / "inject"
    srv = start(server, impl, ["error"], "memory", "1M", "error-rate=1",
                "error-pread=EPERM", "error-file=%s" % trigger)
    h = connect(srv)
    assert h.pread(512, 0) == bytes(512)
    trigger.touch()
    assert errno_of(lambda: h.pread(512, 0)) == errno.EPERM
    assert errno_of(lambda: h.pwrite(b"a", 0)) == errno.EIO
    trigger.unlink()
    h.pwrite(b"a", 0)
    assert h.pread(1, 0) == b"a"
    h.shutdown()


def test_error_rate_is_random(server, impl):
    """At 50% both outcomes occur in 200 reads (failing by chance with
    probability 2**-199)."""
    srv = start(server, impl, ["error"], "memory", "1M",
                "error-pread-rate=0.5")
    h = connect(srv)
    fails = sum(1 for _ in range(200) if errno_of(lambda: h.pread(1, 0)))
    assert 0 < fails < 200
    h.shutdown()


@pytest.mark.parametrize("arg", ["error=EFOO", "error-rate=150%",
                                 "error-rate=2", "error-rate=-1",
                                 "error-trim-rate=abc"])
def test_error_bad_value(impl, arg):
    rc, err = run_server(impl, ["error"], "memory", "1M", arg)
    assert rc == 1
    assert arg.split("=")[1] in err


# ------------------------------------------------------------- exitlast

def test_exitlast(server, impl):
    srv = start(server, impl, ["exitlast"], "memory", "1M")
    h1 = connect(srv)
    h2 = connect(srv)
    h1.shutdown()
    assert h2.pread(1, 0) == b"\0"
    assert srv.alive()
    h2.shutdown()
    assert wait_exit(srv) == 0


# ----------------------------------------------------------- exportname

def exports(srv):
    """The (name, description) pairs SRV lists, or the errno with which
    it refuses to list."""
    got = []
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(srv.uri)
    try:
        h.opt_list(lambda name, desc: got.append((name, desc)))
    except nbd.Error as e:
        return e.errnum
    finally:
        h.opt_abort()
    return got


def test_exportname_lists(server, impl, tmp_path):
    base = ["memory", "1M", "exportname=a", "exportname=b",
            "default-export=b"]
    cases = {
        "keep": [("", "")],
        "empty": [],
        "explicit": [("a", "fixed"), ("b", "fixed")],
        "defaultonly": [("b", "")],
    }
    for mode, want in cases.items():
        srv = start(server, impl, ["exportname"], *base,
                    "exportname-list=" + mode, "exportdesc=fixed:fixed")
        got = exports(srv)
        if mode == "keep":
            assert got == [("", "fixed")]
        else:
            assert got == want, mode
        srv.stop()
    srv = start(server, impl, ["exportname"], *base, "exportname-list=error")
    assert exports(srv) == errno.ENOTSUP
    assert "restricted by policy" in srv.stderr_text()


def test_exportname_script_and_strict(server, impl):
    srv = start(server, impl, ["exportname"], "memory", "1M",
                "exportname-strict=true", "exportname=a", "exportname=b",
                "exportname-list=explicit",
                "exportdesc=script:echo \"d-$name\"")
    assert exports(srv) == [("a", "d-a"), ("b", "d-b")]
    h = connect(srv, "a")
    assert h.get_export_name() == "a"
    h.shutdown()
    h = nbd.NBD()
    h.set_full_info(True)
    h.connect_uri(srv.uri_for("b"))
    assert h.get_export_description() == "d-b"
    h.shutdown()
    with pytest.raises(nbd.Error):
        connect(srv, "c")
    with pytest.raises(nbd.Error):
        connect(srv)
    assert "export 'c" in srv.stderr_text()


def test_exportname_default_export(server, impl, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "one").write_bytes(b"1" * 512)
    (tmp_path / "d" / "two").write_bytes(b"2" * 1024)
    srv = start(server, impl, ["exportname"], "file",
                "dir=%s" % (tmp_path / "d"), "default-export=two")
    h = connect(srv)
    assert h.get_size() == 1024
    assert h.pread(1, 0) == b"2"
    h.shutdown()
    h = connect(srv, "one")
    assert h.get_size() == 512
    h.shutdown()


@pytest.mark.parametrize("arg", ["exportname-list=foo", "exportdesc=foo",
                                 "exportname-strict=maybe"])
def test_exportname_bad_value(impl, arg):
    rc, err = run_server(impl, ["exportname"], "memory", "1M", arg)
    assert rc == 1
    assert arg.split("=")[1] in err


# ---------------------------------------------------------------- limit

@pytest.mark.parametrize("limit", [1, 2])
def test_limit(server, impl, limit):
    srv = start(server, impl, ["limit"], "memory", "1M", "limit=%d" % limit)
    held = [connect(srv) for _ in range(limit)]
    with pytest.raises(nbd.Error):
        connect(srv)
    held[0].shutdown()
    # The server notices the close on its own time: retry, bounded.
    for _ in range(500):
        try:
            h = connect(srv)
            break
        except nbd.Error:
            time.sleep(0.01)
    else:
        pytest.fail("a slot never became free after a client left")
    assert h.pread(1, 0) == b"\0"
    h.shutdown()
    assert "too many clients" in srv.stderr_text()


def test_limit_zero_is_unlimited(server, impl):
    srv = start(server, impl, ["limit"], "memory", "1M", "limit=0")
    hs = [connect(srv) for _ in range(5)]
    for h in hs:
        h.shutdown()


@pytest.mark.parametrize("value", ["-1", "x", ""])
def test_limit_bad_value(impl, value):
    rc, err = run_server(impl, ["limit"], "memory", "1M", "limit=" + value)
    assert rc == 1
    assert "limit" in err


# ---------------------------------------------------------------- pause

def control(sock, c):
    sock.sendall(c)
    return sock.recv(1)


def test_pause_holds_requests(server, impl, tmp_path):
    ctl = str(tmp_path / "ctl")
    srv = start(server, impl, ["pause"], "memory", "1M",
                "pause-control=" + ctl)
    h = connect(srv)
    h.pwrite(b"z" * 512, 0)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(ctl)
        assert control(s, b"p") == b"P"
        buf = nbd.Buffer(512)
        cookie = h.aio_pread(buf, 0)
        # While paused the read must not complete; poll a while.
        for _ in range(20):
            h.poll(0)
            assert not h.aio_command_completed(cookie)
            time.sleep(0.01)
        assert control(s, b"q") == b"X"
        assert control(s, b"r") == b"R"
        for _ in range(3000):
            if h.aio_command_completed(cookie):
                break
            h.poll(10)
        else:
            pytest.fail("the read did not complete after resume")
        assert buf.to_bytearray() == b"z" * 512
    h.shutdown()


def test_pause_needs_control(impl):
    rc, err = run_server(impl, ["pause"], "memory", "1M")
    assert rc == 1
    assert "pause-control" in err


# -------------------------------------------------------- retry-request

FLAKY = r"""#!/bin/sh
# Fails the first $FAILS preads (counted in $STATE), then reads zeroes.
case "$1" in
  get_size) echo 1048576 ;;
  thread_model) echo serialize_all_requests ;;
  can_write) exit 3 ;;
  pread)
    n=$(cat "$STATE" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$STATE"
    if [ $n -le "$FAILS" ]; then echo "EIO flaky read $n" >&2; exit 1; fi
    head -c "$3" /dev/zero ;;
  open) echo h ;;
  *) exit 2 ;;
esac
"""


def flaky(tmp_path, fails):
    script = write_script(tmp_path, "flaky.sh", FLAKY)
    state = tmp_path / "state"
    env = dict(os.environ, FAILS=str(fails), STATE=str(state))
    return script, state, env


def test_retry_request_recovers(server, impl, tmp_path):
    script, state, env = flaky(tmp_path, 2)
    srv = start(server, impl, ["retry-request"], "sh", script,
                "retry-request-delay=1", "retry-request-retries=2", env=env)
    h = connect(srv)
    t0 = time.monotonic()
    assert h.pread(512, 0) == bytes(512)
    assert time.monotonic() - t0 >= 2.0
    assert state.read_text().strip() == "3"
    h.shutdown()


def test_retry_request_gives_up(server, impl, tmp_path):
    script, state, env = flaky(tmp_path, 3)
    srv = start(server, impl, ["retry-request"], "sh", script,
                "retry-request-delay=1", "retry-request-retries=1", env=env)
    h = connect(srv)
    assert errno_of(lambda: h.pread(512, 0)) == errno.EIO
    assert state.read_text().strip() == "2"
    # The next request starts a new count: third failure, then success.
    assert h.pread(512, 0) == bytes(512)
    h.shutdown()


@pytest.mark.parametrize("arg", ["retry-request-delay=0",
                                 "retry-request-retries=x",
                                 "retry-request-open=maybe"])
def test_retry_request_bad_value(impl, arg):
    rc, err = run_server(impl, ["retry-request"], "memory", "1M", arg)
    assert rc == 1
    assert arg.split("=")[0] in err or arg.split("=")[1] in err
