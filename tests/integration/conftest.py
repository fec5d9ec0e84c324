"""Shared fixtures: start a real server (nbdsrv or Debian's nbdkit) on a
private Unix socket, hand its URI to the test, and always stop it by PID.
"""
import os
import signal
import socket
import subprocess
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("NBDSRV_BUILD", os.path.join(ROOT, "build"))
NBDSRV = os.path.join(BUILD, "nbdsrv")
NBDKIT = "/usr/bin/nbdkit"
PLUGINDIR = os.path.join(BUILD, "plugins")
BINARIES = {"nbdsrv": NBDSRV, "nbdkit": NBDKIT}


def plugin_path(name):
    """Path of one of our own plugins in the build tree."""
    return os.path.join(PLUGINDIR, "nbdkit-%s-plugin.so" % name)


class Server:
    """A running server process listening on a Unix socket."""

    def __init__(self, impl, args, sock, proc):
        self.impl = impl
        self.args = args
        self.sock = sock
        self.proc = proc
        self.pid = proc.pid
        self.uri = "nbd+unix:///?socket=%s" % sock

    def uri_for(self, export):
        return "nbd+unix:///%s?socket=%s" % (export, self.sock)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Stop the server by PID; return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr_text(self):
        self.stop()
        return self.proc.stderr.read().decode(errors="replace")


def start_server(impl, args, sock, env=None, timeout=10):
    """Start IMPL in the foreground on SOCK and wait until it listens."""
    cmd = [BINARIES[impl], "-f", "-U", sock] + list(args)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + timeout
    while not os.path.exists(sock):
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")
            raise RuntimeError("%s exited with %d: %s"
                               % (cmd, proc.returncode, err))
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError("%s did not create %s" % (cmd, sock))
        time.sleep(0.01)
    # bind() creates the file before listen(): wait until it accepts.
    while True:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(sock)
                break
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    proc.wait()
                    raise RuntimeError("%s is not accepting on %s"
                                       % (cmd, sock))
                time.sleep(0.01)
    return Server(impl, args, sock, proc)


@pytest.fixture
def server(tmp_path):
    """Factory: server(*args, impl="nbdsrv") starts a server and returns
    a Server; every server started is stopped at teardown."""
    started = []

    def start(*args, impl="nbdsrv", env=None):
        sock = str(tmp_path / ("sock%d" % len(started)))
        s = start_server(impl, args, sock, env=env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(params=["nbdsrv", "nbdkit"])
def impl(request):
    """Run a test once against nbdsrv and once against Debian's nbdkit."""
    return request.param
