"""The command line.  nbdsrv copies nbdkit's flags, so every test that
Debian's nbdkit 1.32 can pass runs against both (the `impl` fixture);
flags 1.32 lacks (--print-uri, --timeout, systemd socket activation as
nbdsrv does it) are tested on nbdsrv alone.

These tests start their servers themselves with subprocess, so that the
flags under test (-f, -P, -U -, --run, ...) are theirs to choose, and
always stop and reap them by PID in finally blocks.
"""
import ctypes
import errno
import json
import os
import re
import select
import signal
import socket
import subprocess
import time

import nbd
import pytest

from conftest import BINARIES, NBDSRV

# nbdsh and --run commands find python3 through PATH; only Debian's
# python3 has libnbd's `nbd` module.
ENV = dict(os.environ,
           PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))

# Hang protection only.  None of these is a speed requirement: each is
# the point where we stop waiting and call the server stuck.
CMD_TIMEOUT = 120
START_TIMEOUT = 60
STOP_TIMEOUT = 60
POLL_INTERVAL = 0.02

MiB = 1024 * 1024


# ---------------------------------------------------------------- helpers

def run(cmd, timeout=CMD_TIMEOUT, env=None):
    """Run CMD to completion; return (status, stdout, stderr) as text.
    subprocess.run kills and reaps CMD itself if it overruns."""
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env or ENV, timeout=timeout,
                          text=True, errors="replace")
    return proc.returncode, proc.stdout, proc.stderr


def check_run(cmd, **kw):
    rc, out, err = run(cmd, **kw)
    assert rc == 0, "%s exited with status %d\nstdout:\n%s\nstderr:\n%s" % (
        cmd, rc, out, err)
    return out


def spawn(cmd, tmp_path, name="server", stdout=None, pass_fds=()):
    """Start CMD in the background, its stderr (and stdout, unless given)
    going to files under TMP_PATH so no pipe can fill and block it."""
    err = open(tmp_path / (name + ".err"), "wb")
    out = stdout if stdout is not None else open(
        tmp_path / (name + ".out"), "wb")
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, env=ENV,
                                pass_fds=pass_fds)
    finally:
        err.close()
        if stdout is None:
            out.close()


def read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def stop(proc, sig=signal.SIGTERM):
    """Stop PROC by PID if it still runs, and reap it; return its status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_for(pred, proc=None, what="condition", timeout=START_TIMEOUT):
    """Poll PRED until true, failing if PROC exits first or TIMEOUT
    passes."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_INTERVAL) + 1):
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail("server exited with status %s before %s"
                        % (proc.returncode, what))
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL)
    pytest.fail("timed out waiting for %s" % what)


def wait_exit(proc, timeout=STOP_TIMEOUT):
    """Wait for PROC to exit on its own; fail (after killing it) if it
    does not."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop(proc, signal.SIGKILL)
        pytest.fail("process %d did not exit" % proc.pid)


def tcp_listening(host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect((host, port))
        except OSError:
            return False
    return True


def unix_accepting(path):
    """True once PATH accepts connections.  The socket file appears at
    bind(), before listen(): waiting for the file alone races (both
    nbdkit and nbdsrv refuse connections in that window)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True


def free_port(host):
    """A TCP port that was free on HOST a moment ago."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def have_ipv6_loopback():
    try:
        free_port("::1")
    except OSError:
        return False
    return True


def pid_state(pid):
    """The one-letter state of PID from /proc, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    return stat[stat.rindex(")") + 2]


def pid_running(pid):
    state = pid_state(pid)
    return state is not None and state not in "ZX"


PR_SET_CHILD_SUBREAPER = 36


def set_subreaper(on):
    """Make this process the subreaper of its orphaned descendants, so
    that a server which daemonizes (or outlives its parent) becomes our
    child and we can reap it.  PID 1 here does not reap orphans."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def kill_and_reap(pid, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
    """Stop PID, a child we adopted as subreaper, and reap it.  Return
    its wait status, or None if it was not our child to reap."""
    if pid_running(pid):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_INTERVAL) + 1):
        try:
            wpid, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if wpid == pid:
            return status
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    pytest.fail("process %d ignored signal %d" % (pid, sig))


def connect_unix(sock):
    h = nbd.NBD()
    h.connect_unix(str(sock))
    return h


def unix_uri(sock, export=""):
    return "nbd+unix:///%s?socket=%s" % (export, sock)


def start_unix(impl, tmp_path, args, name="server"):
    """Start IMPL in the foreground on a Unix socket; wait until the
    socket accepts connections.  Returns (proc, sock)."""
    sock = tmp_path / (name + ".sock")
    proc = spawn([BINARIES[impl], "-f", "-U", str(sock)] + list(args),
                 tmp_path, name)
    try:
        wait_for(lambda: unix_accepting(sock), proc, "socket %s" % sock)
    except BaseException:
        stop(proc)
        raise
    return proc, sock


# ------------------------------------------------------ -U - and --run

def test_run_size(impl):
    out = check_run([BINARIES[impl], "-U", "-", "memory", "size=1M",
                     "--run", 'nbdinfo --size "$uri"'])
    assert out.strip() == str(MiB)


@pytest.mark.parametrize("status", [0, 1, 3, 42])
def test_run_exit_status(impl, status):
    rc, out, err = run([BINARIES[impl], "-U", "-", "memory", "1M",
                        "--run", "exit %d" % status])
    assert rc == status, (out, err)


def test_run_variables(impl):
    script = ('nbdinfo --size "$nbd"; '
              'echo "unixsocket=$unixsocket"; '
              'test -S "$unixsocket" && echo is-socket; '
              'echo "exportname=$exportname"; '
              'echo "uri=$uri"')
    out = check_run([BINARIES[impl], "-U", "-", "memory", "1M",
                     "--run", script])
    lines = out.splitlines()
    assert lines[0] == str(MiB), out
    assert "is-socket" in lines, out
    vars_ = dict(l.split("=", 1) for l in lines if "=" in l)
    assert vars_["unixsocket"].startswith("/"), out
    assert vars_["exportname"] == "", out
    assert "socket=" + vars_["unixsocket"] in vars_["uri"], out


def test_run_exportname(impl):
    script = ('echo "exportname=$exportname"; echo "uri=$uri"; '
              'nbdinfo --json "$uri"')
    out = check_run([BINARIES[impl], "-U", "-", "-e", "foo", "memory", "1M",
                     "--run", script])
    first, second, rest = out.split("\n", 2)
    assert first == "exportname=foo", out
    assert second.startswith("uri=nbd+unix:///foo?"), out
    info = json.loads(rest)
    assert info["exports"][0]["export-name"] == "foo"
    assert info["exports"][0]["export-size"] == MiB


def test_run_unix_socket_path(impl, tmp_path):
    """-U PATH with --run: $unixsocket is that path."""
    sock = tmp_path / "run.sock"
    out = check_run([BINARIES[impl], "-U", str(sock), "memory", "1M",
                     "--run", 'nbdinfo --size "$uri"; echo "$unixsocket"'])
    assert out.split() == [str(MiB), str(sock)]


# ------------------------------------------------------------ addresses

def start_tcp(impl, tmp_path, host, extra=(), attempts=3):
    """Start IMPL on HOST and a free port, retrying if another process
    takes the port in between.  Returns (proc, port)."""
    for attempt in range(attempts):
        port = free_port(host)
        proc = spawn([BINARIES[impl], "-f", "-i", host, "-p", str(port)]
                     + list(extra) + ["memory", "1M"], tmp_path,
                     "tcp%d" % attempt)
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(int(START_TIMEOUT / POLL_INTERVAL) + 1):
            if proc.poll() is not None or tcp_listening(host, port):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL)
        if proc.poll() is None and tcp_listening(host, port):
            return proc, port
        stop(proc)
        err = read_text(tmp_path / ("tcp%d.err" % attempt))
        if "in use" not in err:
            pytest.fail("server on %s:%d failed to start: %s"
                        % (host, port, err))
    pytest.fail("no free port found on %s" % host)


def test_tcp_ipv4(impl, tmp_path):
    proc, port = start_tcp(impl, tmp_path, "127.0.0.1")
    try:
        out = check_run(["nbdinfo", "--size", "nbd://127.0.0.1:%d" % port])
        assert out.strip() == str(MiB)
    finally:
        assert stop(proc) == 0


def test_tcp_ipv6(impl, tmp_path):
    if not have_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    proc, port = start_tcp(impl, tmp_path, "::1")
    try:
        out = check_run(["nbdinfo", "--size", "nbd://[::1]:%d" % port])
        assert out.strip() == str(MiB)
        # Bound to ::1 only: nothing listens on 127.0.0.1 at that port.
        assert not tcp_listening("127.0.0.1", port)
    finally:
        assert stop(proc) == 0


def test_ipv4_only(impl, tmp_path):
    proc, port = start_tcp(impl, tmp_path, "127.0.0.1", extra=["-4"])
    try:
        out = check_run(["nbdinfo", "--size", "nbd://127.0.0.1:%d" % port])
        assert out.strip() == str(MiB)
    finally:
        assert stop(proc) == 0


def test_ipv4_only_rejects_ipv6_address(impl, tmp_path):
    """-4 with an IPv6 listen address has nothing to listen on."""
    port = free_port("127.0.0.1")
    rc, out, err = run([BINARIES[impl], "-f", "-4", "-i", "::1",
                        "-p", str(port), "memory", "1M"])
    assert rc == 1, (out, err)
    assert err.strip(), "no error message"


def test_ipv6_only_rejects_ipv4_address(impl, tmp_path):
    port = free_port("127.0.0.1")
    rc, out, err = run([BINARIES[impl], "-f", "-6", "-i", "127.0.0.1",
                        "-p", str(port), "memory", "1M"])
    assert rc == 1, (out, err)
    assert err.strip(), "no error message"


# ------------------------------------------------------- export options

def test_readonly(impl, tmp_path):
    proc, sock = start_unix(impl, tmp_path, ["-r", "memory", "1M"])
    try:
        info = json.loads(check_run(["nbdinfo", "--json",
                                     unix_uri(sock)]))
        assert info["exports"][0]["is_read_only"] is True
        rc, _, err = run(["nbdinfo", "--is", "read-only", unix_uri(sock)])
        assert rc == 0, err
        rc, _, err = run(["nbdinfo", "--can", "write", unix_uri(sock)])
        assert rc == 2, err
        h = connect_unix(sock)
        try:
            assert h.is_read_only()
            assert h.pread(512, 0) == bytes(512)
            # libnbd refuses the write itself ...
            with pytest.raises(nbd.Error) as exc:
                h.pwrite(b"x" * 512, 0)
            assert exc.value.errnum == errno.EPERM
            # ... and so does the server when libnbd lets it through.
            h.set_strict_mode(0)
            for op in (lambda: h.pwrite(b"x" * 512, 0),
                       lambda: h.zero(512, 0),
                       lambda: h.trim(512, 0)):
                with pytest.raises(nbd.Error) as exc:
                    op()
                assert exc.value.errnum == errno.EPERM, exc.value
            assert h.pread(512, 0) == bytes(512)
        finally:
            h.shutdown()
    finally:
        assert stop(proc) == 0


def test_single_nbdsh(impl):
    script = ("h.connect_command([%r, '-s', 'memory', 'size=1M'])\n"
              "assert h.get_size() == 1048576\n"
              "h.pwrite(b'abc' * 100, 1000)\n"
              "assert h.pread(300, 1000) == b'abc' * 100\n"
              "print('single-ok')\n" % BINARIES[impl])
    out = check_run(["nbdsh", "-c", script])
    assert out.strip() == "single-ok"


def test_single_in_process(impl):
    """-s serves exactly one client on stdin/stdout (libnbd spawns and
    reaps the server)."""
    h = nbd.NBD()
    h.connect_command([BINARIES[impl], "-s", "memory", "size=1M"])
    try:
        assert h.get_size() == MiB
        h.pwrite(b"\x01" * 4096, 0)
        assert h.pread(4096, 0) == b"\x01" * 4096
    finally:
        h.shutdown()


def test_threads_one(impl, tmp_path):
    """-t 1: one worker thread still serves many requests in flight."""
    proc, sock = start_unix(impl, tmp_path, ["-t", "1", "memory", "1M"])
    try:
        h = connect_unix(sock)
        try:
            bufs = [nbd.Buffer.from_bytearray(bytearray([i]) * 4096)
                    for i in range(16)]
            cookies = [h.aio_pwrite(b, i * 4096)
                       for i, b in enumerate(bufs)]
            deadline = time.monotonic() + STOP_TIMEOUT
            for _ in range(100000):
                cookies = [c for c in cookies
                           if not h.aio_command_completed(c)]
                if not cookies or time.monotonic() > deadline:
                    break
                h.poll(1000)
            assert not cookies, "writes never completed"
            for i in range(16):
                assert h.pread(4096, i * 4096) == bytes([i]) * 4096
        finally:
            h.shutdown()
    finally:
        assert stop(proc) == 0


def test_magic_key(impl):
    """`memory 1M` means `memory size=1M`."""
    sizes = []
    for param in ("1M", "size=1M", "2M", "size=2M"):
        out = check_run([BINARIES[impl], "-U", "-", "memory", param,
                         "--run", 'nbdinfo --size "$uri"'])
        sizes.append(int(out))
    assert sizes == [MiB, MiB, 2 * MiB, 2 * MiB]


def test_key_value_params(impl):
    out = check_run([BINARIES[impl], "-U", "-", "pattern", "size=3M",
                     "--run", 'nbdinfo --size "$uri"'])
    assert int(out) == 3 * MiB


def test_mask_handshake_zero(impl, tmp_path):
    proc, sock = start_unix(impl, tmp_path,
                            ["--mask-handshake=0", "memory", "1M"])
    try:
        out = check_run(["nbdinfo", unix_uri(sock)])
        first = out.splitlines()[0]
        # Old (non-fixed) newstyle: no structured replies possible.
        assert first.startswith("protocol: newstyle "), out
        assert "newstyle-fixed" not in first, out
        assert "export-size: %d" % MiB in out
        info = json.loads(check_run(["nbdinfo", "--json",
                                     unix_uri(sock)]))
        assert info["protocol"] == "newstyle"
        # The data path still works.
        h = connect_unix(sock)
        try:
            assert h.get_handshake_flags() == 0
            h.pwrite(b"m" * 512, 512)
            assert h.pread(512, 512) == b"m" * 512
        finally:
            h.shutdown()
    finally:
        assert stop(proc) == 0


def test_no_sr(impl, tmp_path):
    proc, sock = start_unix(impl, tmp_path, ["--no-sr", "memory", "1M"])
    try:
        out = check_run(["nbdinfo", unix_uri(sock)])
        assert "using simple packets" in out.splitlines()[0], out
        info = json.loads(check_run(["nbdinfo", "--json",
                                     unix_uri(sock)]))
        assert info["structured"] is False
    finally:
        assert stop(proc) == 0


def test_structured_by_default(impl, tmp_path):
    proc, sock = start_unix(impl, tmp_path, ["memory", "1M"])
    try:
        out = check_run(["nbdinfo", unix_uri(sock)])
        assert "using structured packets" in out.splitlines()[0], out
        assert out.startswith("protocol: newstyle-fixed"), out
    finally:
        assert stop(proc) == 0


# ------------------------------------------------------ process control

def test_pidfile(impl, tmp_path):
    pidfile = tmp_path / "server.pid"
    proc, sock = start_unix(impl, tmp_path,
                            ["-P", str(pidfile), "memory", "1M"])
    try:
        wait_for(lambda: pidfile.exists() and
                 read_text(pidfile).endswith("\n"), proc, "pidfile")
        assert read_text(pidfile).strip() == str(proc.pid)
    finally:
        assert stop(proc) == 0


def test_daemonize(impl, tmp_path):
    """Without -f the server forks into the background: the command
    returns 0 and the pidfile names the live server."""
    pidfile = tmp_path / "daemon.pid"
    sock = tmp_path / "daemon.sock"
    set_subreaper(True)
    pid = None
    try:
        rc, out, err = run([BINARIES[impl], "-P", str(pidfile),
                            "-U", str(sock), "memory", "1M"])
        set_subreaper(False)
        assert rc == 0, (out, err)
        wait_for(lambda: pidfile.exists() and
                 read_text(pidfile).endswith("\n"), None, "pidfile")
        pid = int(read_text(pidfile))
        assert pid_running(pid), "pidfile names %d, not running" % pid
        wait_for(lambda: unix_accepting(sock), None, "daemon's socket")
        out = check_run(["nbdinfo", "--size", unix_uri(sock)])
        assert out.strip() == str(MiB)
    finally:
        set_subreaper(False)
        if pid is not None:
            status = kill_and_reap(pid)
            # As subreaper we adopted the daemon, so we must reap it.
            assert status is not None, "daemon %d was not our child" % pid
            assert os.waitstatus_to_exitcode(status) == 0


def test_exit_with_parent(impl, tmp_path):
    """--exit-with-parent: the server exits when its parent does."""
    sock = tmp_path / "ewp.sock"
    # The parent shell starts the server, prints its PID and waits for a
    # line on its stdin; closing that pipe makes the parent exit.
    parent_cmd = ['sh', '-c', '"$@" </dev/null & echo $!; read x', 'sh',
                  BINARIES[impl], "-f", "--exit-with-parent",
                  "-U", str(sock), "memory", "1M"]
    set_subreaper(True)
    parent = subprocess.Popen(parent_cmd, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=ENV)
    pid = None
    try:
        pid = int(read_line(parent.stdout.fileno(), parent))
        wait_for(lambda: unix_accepting(sock), parent, "socket %s" % sock)
        check_run(["nbdinfo", "--size", unix_uri(sock)])
        parent.stdin.close()
        wait_exit(parent)
        set_subreaper(False)
        # Orphaned, the server is now our child: wait for it to go.
        deadline = time.monotonic() + STOP_TIMEOUT
        status = None
        for _ in range(int(STOP_TIMEOUT / POLL_INTERVAL) + 1):
            wpid, st = os.waitpid(pid, os.WNOHANG)
            if wpid == pid:
                status = st
                pid = None
                break
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL)
        assert status is not None, "server outlived its parent"
    finally:
        set_subreaper(False)
        if parent.poll() is None:
            stop(parent, signal.SIGKILL)
        parent.stdout.close()
        if pid is not None:
            kill_and_reap(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_with_client(impl, tmp_path, sig):
    """A signal while a client is connected ends the server cleanly:
    exit status 0 and (nbdsrv) the socket file is removed.  nbdkit 1.32
    keeps serving the connected client until it disconnects and leaves
    the socket file behind, so we disconnect before waiting."""
    proc, sock = start_unix(impl, tmp_path, ["memory", "1M"])
    try:
        h = connect_unix(sock)
        h.pwrite(b"s" * 512, 0)
        proc.send_signal(sig)
        try:
            h.shutdown()
        except nbd.Error:
            pass            # the server may already have closed it
        del h
        status = wait_exit(proc)
        assert status == 0, read_text(tmp_path / "server.err")
        if impl == "nbdsrv":
            assert not sock.exists(), "socket file left behind"
    finally:
        stop(proc, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_idle(impl, tmp_path, sig):
    proc, sock = start_unix(impl, tmp_path, ["memory", "1M"])
    try:
        check_run(["nbdinfo", "--size", unix_uri(sock)])
        proc.send_signal(sig)
        assert wait_exit(proc) == 0, read_text(tmp_path / "server.err")
        if impl == "nbdsrv":
            assert not sock.exists(), "socket file left behind"
    finally:
        stop(proc, signal.SIGKILL)


# ------------------------------------------------------ information

def test_dump_plugin(impl):
    out = check_run([BINARIES[impl], "memory", "--dump-plugin"])
    lines = out.splitlines()
    assert "name=memory" in lines, out
    assert "has_pread=1" in lines, out
    assert "has_pwrite=1" in lines, out
    assert any(l.startswith("path=") for l in lines), out
    assert any(re.fullmatch(r"thread_model=\w+", l) for l in lines), out


def test_dump_config(impl):
    out = check_run([BINARIES[impl], "--dump-config"])
    lines = out.splitlines()
    assert lines, "no output"
    for line in lines:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*=.*", line), line
    keys = {l.split("=", 1)[0] for l in lines}
    assert {"version", "plugindir"} <= keys, keys


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(impl, flag):
    out = check_run([BINARIES[impl], flag])
    lines = out.splitlines()
    assert re.match(r"\S+ \d+\.\d+\.\d+", lines[0]), out


def test_help(impl):
    out = check_run([BINARIES[impl], "--help"])
    assert "PLUGIN" in out
    assert "--run" in out


def test_plugin_help(impl):
    out = check_run([BINARIES[impl], "memory", "--help"])
    assert "plugin: memory" in out, out
    assert "size=" in out, out


# ------------------------------------------------------ errors

BAD_COMMANDS = {
    "bad-option": (["--no-such-option", "memory", "1M"], "no-such-option"),
    "unknown-plugin": (["nosuchplugin"], "nosuchplugin"),
    "bad-size": (["memory", "size=foo"], "foo"),
    "unknown-key": (["memory", "1M", "bogus=1"], "bogus"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_bad_command_line(impl, tmp_path, case):
    """One line on stderr naming the problem, status 1, no socket left.
    nbdkit 1.32 follows some of these with usage text, so the one-line
    rule is checked for nbdsrv only."""
    args, word = BAD_COMMANDS[case]
    sock = tmp_path / "bad.sock"
    rc, out, err = run([BINARIES[impl], "-f", "-U", str(sock)] + args)
    assert rc == 1, (out, err)
    lines = err.splitlines()
    assert lines, "nothing on stderr"
    assert word in lines[0], err
    if impl == "nbdsrv":
        assert len(lines) == 1, "expected one line on stderr, got:\n" + err
    assert not sock.exists(), "socket file left behind"


# ------------------------------------------------------ logging

def provoke_error_log(sock):
    """Make the server log an error: client flags with a bit it did not
    offer (H-2), which both servers log and answer with a disconnect."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(STOP_TIMEOUT)
        s.connect(str(sock))
        greeting = b""
        for _ in range(18):
            chunk = s.recv(18 - len(greeting))
            if not chunk:
                break
            greeting += chunk
            if len(greeting) == 18:
                break
        assert greeting[:8] == b"NBDMAGIC", greeting
        s.sendall(b"\0\0\0\x81")
        # Wait for the disconnect, so the message has been written.
        for _ in range(100):
            if not s.recv(4096):
                break


@pytest.mark.parametrize("log", ["stderr", "null"])
def test_log(impl, tmp_path, log):
    proc, sock = start_unix(impl, tmp_path, ["--log=" + log, "memory", "1M"])
    try:
        provoke_error_log(sock)
    finally:
        assert stop(proc) == 0
    err = read_text(tmp_path / "server.err")
    if log == "null":
        assert err == "", err
    else:
        assert "error" in err.lower() and "0x81" in err, err


def test_verbose(impl, tmp_path):
    rc, out, err = run([BINARIES[impl], "-v", "-U", "-", "memory", "1M",
                        "--run", 'nbdinfo --size "$uri"'])
    assert rc == 0, err
    assert out.strip() == str(MiB)
    debug = [l for l in err.splitlines() if "debug" in l]
    assert len(debug) >= 3, err


def test_quiet_without_verbose(impl):
    rc, out, err = run([BINARIES[impl], "-U", "-", "memory", "1M",
                        "--run", 'nbdinfo --size "$uri"'])
    assert rc == 0, err
    assert "debug" not in err, err


# ------------------------------------------------------ nbdsrv only

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_with_client_still_connected(tmp_path, sig):
    """nbdsrv exits on a signal even while a client stays connected
    (nbdkit 1.32 waits for the client to go away), with status 0 and the
    socket file removed; the client then sees the connection closed."""
    proc, sock = start_unix("nbdsrv", tmp_path, ["memory", "1M"])
    h = None
    try:
        h = connect_unix(sock)
        h.pwrite(b"s" * 512, 0)
        proc.send_signal(sig)
        status = wait_exit(proc)
        assert status == 0, read_text(tmp_path / "server.err")
        assert not sock.exists(), "socket file left behind"
        with pytest.raises(nbd.Error):
            h.pread(512, 0)
    finally:
        stop(proc, signal.SIGKILL)
        if h is not None:
            del h


def test_print_uri_unix(tmp_path):
    sock = tmp_path / "p.sock"
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb") as wf:
            proc = spawn([NBDSRV, "-f", "--print-uri", "-U", str(sock),
                          "memory", "1M"], tmp_path, stdout=wf)
        line = read_line(r, proc)
    finally:
        os.close(r)
    try:
        assert line.startswith("nbd+unix://"), line
        assert "socket=%s" % sock in line, line
        out = check_run(["nbdinfo", "--size", line])
        assert out.strip() == str(MiB)
    finally:
        assert stop(proc) == 0


def test_print_uri_tcp(tmp_path):
    port = free_port("127.0.0.1")
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb") as wf:
            proc = spawn([NBDSRV, "-f", "--print-uri", "-i", "127.0.0.1",
                          "-p", str(port), "memory", "1M"], tmp_path,
                         stdout=wf)
        line = read_line(r, proc)
    finally:
        os.close(r)
    try:
        assert line.startswith("nbd://"), line
        assert line.rstrip("/").endswith(":%d" % port), line
        out = check_run(["nbdinfo", "--size", line])
        assert out.strip() == str(MiB)
    finally:
        assert stop(proc) == 0


def read_line(fd, proc, timeout=START_TIMEOUT):
    """Read one line from pipe FD, written by PROC, without blocking
    forever."""
    buf = b""
    deadline = time.monotonic() + timeout
    for _ in range(10000):
        if b"\n" in buf:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            stop(proc)
            pytest.fail("no line printed; got %r" % buf)
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                stop(proc)
                pytest.fail("stdout closed after %r (status %s)"
                            % (buf, proc.returncode))
            buf += chunk
    return buf.decode().split("\n", 1)[0]


def test_timeout_disconnects_silent_client(tmp_path):
    """--timeout=1: a client that connects and sends nothing is cut off.
    The bound below is generous on purpose; only the disconnection is
    asserted, not how fast it came."""
    proc, sock = start_unix("nbdsrv", tmp_path,
                            ["--timeout=1", "memory", "1M"])
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(sock))
            s.settimeout(1.0)
            received = b""
            closed = False
            deadline = time.monotonic() + 30
            for _ in range(1000):
                if time.monotonic() > deadline:
                    break
                try:
                    chunk = s.recv(4096)
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                received += chunk
            assert closed, "silent client still connected after 30 s"
            # What arrived before the close is at most the greeting.
            assert len(received) <= 18, received
        # Only the connection ends, not the server.  (No check that a
        # normal client still gets in: under load even a quick
        # handshake could exceed 1 s.)
        assert proc.poll() is None, "server exited"
        assert unix_accepting(sock)
    finally:
        assert stop(proc) == 0


SOCKET_ACTIVATION_WRAPPER = r"""
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_socket_activation(tmp_path):
    """systemd socket activation: the listening socket arrives as fd 3
    with LISTEN_PID (our own pid after exec) and LISTEN_FDS=1."""
    path = tmp_path / "activated.sock"
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lsock.bind(str(path))
        lsock.listen(16)
        fd = lsock.fileno()
        proc = spawn(["/usr/bin/python3", "-c", SOCKET_ACTIVATION_WRAPPER,
                      str(fd), NBDSRV, "-f", "memory", "1M"],
                     tmp_path, pass_fds=(fd,))
    finally:
        lsock.close()
    try:
        for _ in range(2):
            out = check_run(["nbdinfo", "--size", unix_uri(path)])
            assert out.strip() == str(MiB)
        assert proc.poll() is None, read_text(tmp_path / "server.err")
    finally:
        assert stop(proc) == 0, read_text(tmp_path / "server.err")


def test_log_file(tmp_path):
    """--log=FILE (nbdsrv only): messages go to the file, not stderr."""
    logfile = tmp_path / "server.log"
    proc, sock = start_unix("nbdsrv", tmp_path,
                            ["--log=%s" % logfile, "memory", "1M"])
    try:
        provoke_error_log(sock)
    finally:
        assert stop(proc) == 0
    assert read_text(tmp_path / "server.err") == ""
    text = read_text(logfile)
    assert "error" in text.lower() and "0x81" in text, text


def test_keepalive(tmp_path):
    """--keepalive (nbdsrv only): accepted TCP sockets get SO_KEEPALIVE,
    which ss(8) shows as a keepalive timer on the server's side."""
    proc, port = start_tcp("nbdsrv", tmp_path, "127.0.0.1",
                           extra=["--keepalive"])
    try:
        h = nbd.NBD()
        h.connect_tcp("127.0.0.1", str(port))
        try:
            assert h.get_size() == MiB
            rc, out, err = run(["ss", "-tnoH", "state", "established",
                                "( sport = :%d )" % port])
            assert rc == 0, err
            assert "keepalive" in out, out
        finally:
            h.shutdown()
    finally:
        assert stop(proc) == 0


def test_no_mc(tmp_path):
    """--no-mc (nbdsrv only): no meta contexts, so no block status."""
    proc, sock = start_unix("nbdsrv", tmp_path, ["--no-mc", "memory", "1M"])
    try:
        info = json.loads(check_run(["nbdinfo", "--json",
                                     unix_uri(sock)]))
        assert info["structured"] is True
        assert not info["exports"][0].get("contexts"), info
        h = nbd.NBD()
        h.add_meta_context("base:allocation")
        h.connect_unix(str(sock))
        try:
            assert not h.can_meta_context("base:allocation")
            assert h.pread(512, 0) == bytes(512)
        finally:
            h.shutdown()
    finally:
        assert stop(proc) == 0


# ------------------------------------------- combinations nbdkit refuses

@pytest.mark.parametrize("args", [
    ["-p", "10999", "-U", "-", "null", "--run", "exit 9"],
    ["-s", "--dump-plugin", "null"],
    ["--dump-plugin", "-s", "null"],
    ["-s", "-U", "SOCK", "null"],
    ["-s", "-p", "10999", "null"],
    ["-s", "--run", "exit 9", "null"],
    ["--vsock", "-U", "SOCK", "null"],
])
def test_refused_combinations(impl, tmp_path, args):
    """Each combination nbdkit refuses is refused with one line on
    stderr and status 1, before anything runs (the --run command would
    exit 9)."""
    args = [str(tmp_path / "s") if a == "SOCK" else a for a in args]
    rc, out, err = run([BINARIES[impl]] + args)
    assert rc == 1, (out, err)
    assert out == "" and len(err.strip().splitlines()) == 1, err


def test_threads_zero_is_the_default(impl):
    """-t 0 is accepted by nbdkit as the default thread count."""
    out = check_run([BINARIES[impl], "-t", "0", "-U", "-", "memory", "1M",
                     "--run", 'nbdinfo --size "$uri"'])
    assert out.strip() == str(MiB)


# ---------------------------------------------------------- debug lines

# nbdkit names its worker threads NAME.N; nbdsrv's are NAME[N] too.
DEBUG_LINE = re.compile(r"^(nbdkit|nbdsrv): ([a-z0-9_-]+(\[\d+\]|\.\d+): )?"
                        r"(debug|error): ")


def test_debug_line_shapes(impl):
    """-v lines are PROG: debug: outside a connection and
    PROG: NAME[N]: debug: inside one, as scripts grep for them."""
    rc, out, err = run([BINARIES[impl], "-v", "-U", "-", "memory", "1M",
                        "--run", 'nbdinfo --size "$uri"'])
    assert rc == 0, err
    lines = err.splitlines()
    assert [l for l in lines if not DEBUG_LINE.match(l)] == []
    assert any(re.match(r"^\w+: memory\[1\]: debug: ", l) for l in lines)
    assert any(re.match(r"^\w+: debug: ", l) for l in lines)
