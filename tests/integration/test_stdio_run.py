"""The server's stdin and stdout, and the --run command it supervises.

As with nbdkit 1.32, stdin and stdout belong to the plugin until
get_ready and point at /dev/null from after_fork on, in every mode; a
--run command gets the caller's stdin and stdout back.  When the server
is told to stop while its --run command runs, it waits for the command
and exits with the command's status.  Each test runs against both
nbdsrv and Debian's nbdkit.
"""
import os
import signal
import subprocess
import time

import nbd
import pytest

from conftest import BINARIES, BUILD

STDIO_PLUGIN = os.path.join(BUILD, "tests", "plugins",
                            "nbdkit-stdio-plugin.so")

# nbdsh in --run commands finds python3 through PATH; only Debian's has
# libnbd's module.
ENV = dict(os.environ, PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))

# Hang protection only, never a speed requirement.
TIMEOUT = 120
POLL = 0.02

# What the stdio plugin reports in every mode: fds 0 and 1 are the
# caller's up to get_ready, /dev/null from after_fork on.
REPORT = ["config=other", "config_complete=other", "get_ready=other",
          "after_fork=devnull", "open=devnull"]

READ_REPORT = ("import sys; "
               "sys.stdout.write(h.pread(4096, 0).rstrip(b'\\0').decode())")


def report_of(h):
    return h.pread(4096, 0).rstrip(b"\0").decode().splitlines()


def wait_until(pred, proc, what):
    deadline = time.monotonic() + TIMEOUT
    for _ in range(int(TIMEOUT / POLL) + 1):
        if pred():
            return
        assert proc.poll() is None, "server exited before %s" % what
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(POLL)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# ---------------------------------------------------------------- stdio

def test_stdio_with_run(impl, tmp_path):
    """The plugin reads the first line of a seekable stdin; the --run
    command reads on from the second and prints to the caller's
    stdout."""
    inp = tmp_path / "in"
    inp.write_text("string1\nstring2\n")
    with open(inp, "rb") as f:
        p = subprocess.run(
            [BINARIES[impl], "-U", "-", STDIO_PLUGIN, "one=1", "--run",
             'nbdsh -u "$uri" -c "%s"; printf cmd=; cat' % READ_REPORT],
            stdin=f, capture_output=True, env=ENV, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().splitlines() == \
        ["one=string1"] + REPORT + ["cmd=string2"]


def test_stdio_foreground(impl, tmp_path):
    sock = str(tmp_path / "sock")
    out = open(tmp_path / "out", "wb")
    proc = subprocess.Popen([BINARIES[impl], "-f", "-U", sock, STDIO_PLUGIN,
                             "two=2"], stdin=subprocess.PIPE, stdout=out,
                            stderr=subprocess.PIPE)
    out.close()
    try:
        proc.stdin.write(b"string\n")
        proc.stdin.close()
        wait_until(lambda: os.path.exists(sock), proc, "the socket")
        h = nbd.NBD()
        h.connect_unix(sock)
        assert report_of(h) == REPORT
        h.shutdown()
    finally:
        assert stop(proc) == 0
    assert (tmp_path / "out").read_text() == "two=string\n"


def test_stdio_single(impl):
    """-s: the client's stream is on stdin and stdout, which the plugin
    must not read (nbdkit_stdio_safe says so); fds 0 and 1 still end up
    on /dev/null."""
    h = nbd.NBD()
    h.connect_command([BINARIES[impl], "-s", STDIO_PLUGIN, "four=4"])
    assert report_of(h) == REPORT
    h.shutdown()


# ---------------------------------------------------------- supervision

def test_run_outlives_killed_server(impl, tmp_path):
    """The command kills the server through its pidfile: the server
    still waits for the command and exits with its status."""
    pidfile = tmp_path / "pid"
    done = tmp_path / "done"
    cmd = ('kill -TERM $(cat %s); sleep 1; echo finished > %s; exit 7'
           % (pidfile, done))
    p = subprocess.run([BINARIES[impl], "-U", "-", "-P", str(pidfile),
                        "null", "--run", cmd], capture_output=True,
                       env=ENV, timeout=TIMEOUT)
    # The command had finished when the server returned.
    assert done.read_text() == "finished\n"
    assert p.returncode == 7, p.stderr


def test_run_not_orphaned_by_signal(impl, tmp_path):
    """SIGTERM to the server while its command runs: the server waits
    for the command, which is never re-parented, and exits with its
    status."""
    started, go, done = (tmp_path / n for n in ("started", "go", "done"))
    # The loop is bounded (60 s) so a broken server cannot leave it
    # running forever.
    cmd = ('echo > %s; i=0; while [ ! -e %s ] && [ $i -lt 3000 ]; do '
           'sleep 0.02; i=$((i+1)); done; '
           '[ "$(ps -o ppid= -p $$ | tr -d " ")" = "$PPID" ] && '
           'echo supervised > %s; exit 5' % (started, go, done))
    proc = subprocess.Popen([BINARIES[impl], "-U", "-", "null", "--run", cmd],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=ENV)
    try:
        wait_until(started.exists, proc, "the command")
        proc.send_signal(signal.SIGTERM)
        go.write_text("")
        assert proc.wait(TIMEOUT) == 5
    finally:
        stop(proc)
    assert done.read_text() == "supervised\n"


def test_run_killed_command(impl):
    """A command killed by a signal: 128 + the signal, and one line."""
    p = subprocess.run([BINARIES[impl], "-U", "-", "null", "--run",
                        "kill -KILL $$"], capture_output=True, env=ENV,
                       timeout=TIMEOUT)
    assert p.returncode == 128 + signal.SIGKILL
    name = "nbdkit" if impl == "nbdkit" else "nbdsrv"
    assert p.stderr.decode() == \
        "%s: external command was killed by signal 9\n" % name
