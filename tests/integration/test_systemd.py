"""Running under systemd: socket activation, Type=notify, the units.

No systemd is running here, so what systemd would do is done by its own
tools and by the test: systemd-socket-activate listens and hands the
socket over (LISTEN_FDS) as a .socket unit does, and a datagram socket
bound in tmp plays the manager's $NOTIFY_SOCKET.  The units in
systemd/ are checked with systemd-analyze verify, and their ExecStart
lines are run the way systemd runs them.
"""
import os
import shlex
import signal
import socket
import subprocess
import time

import nbd
import pytest

from conftest import BINARIES, BUILD, NBDSRV, SANITIZER_MARKERS, server_env

# Hang protection only.
WAIT_TIMEOUT = 60
DISK_SIZE = 1 << 20
UNIT_DIR = os.path.join(BUILD, "systemd")
UNIT_SRC_DIR = os.path.join(os.path.dirname(__file__), "..", "..",
                            "systemd")


class Notifications:
    """A service manager's end of $NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(WAIT_TIMEOUT)

    def next(self):
        """The next message's variables, as a dict."""
        msg = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in msg.splitlines()
                    if "=" in line)

    def close(self):
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    n = Notifications(str(tmp_path / "notify"))
    yield n
    n.close()


def is_listening(path):
    """Whether a Unix socket bound to PATH listens (/proc/net/unix flag
    __SO_ACCEPTCON), found without connecting: under socket activation
    a probe connection would itself start the server."""
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and \
                    int(fields[3], 16) & 0x10000:
                return True
    return False


def wait_listening(path, proc):
    """Wait until PATH listens: the file appears at bind(), before
    listen(), and a client connecting in between is refused."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not is_listening(path):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "%s never listened" % path
        time.sleep(0.01)


def stop(proc):
    """Stop PROC by PID; return its exit status and stderr, which must
    hold no sanitizer report (under make check SANITIZE=1)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WAIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode(errors="replace")
    for marker in SANITIZER_MARKERS:
        assert marker not in err, err
    return proc.returncode, err


def socket_activate(sock, cmd, impl="nbdsrv", setenv=()):
    """Start CMD under systemd-socket-activate listening on SOCK."""
    args = ["systemd-socket-activate", "-l", sock]
    for kv in setenv:
        args += ["-E", kv]
    proc = subprocess.Popen(args + ["--"] + cmd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=server_env(impl))
    wait_listening(sock, proc)
    return proc


def check_disk(uri):
    """Write, read back and check the size, as a client would."""
    h = nbd.NBD()
    h.connect_uri(uri)
    assert h.get_size() == DISK_SIZE
    h.pwrite(b"systemd!" * 512, 8192)
    assert h.pread(4096, 8192) == b"systemd!" * 512
    h.shutdown()


def test_socket_activation(impl, tmp_path):
    sock = str(tmp_path / "sock")
    proc = socket_activate(sock, [BINARIES[impl], "-f", "memory",
                                  "size=%d" % DISK_SIZE], impl)
    try:
        check_disk("nbd+unix:///?socket=%s" % sock)
        # systemd-socket-activate execs the server in its own process,
        # so LISTEN_PID named the server itself.
        exe = os.path.realpath("/proc/%d/exe" % proc.pid)
        assert exe == os.path.realpath(BINARIES[impl])
        check_disk("nbd+unix:///?socket=%s" % sock)
    finally:
        status, err = stop(proc)
    assert status == 0, err


def test_notify_ready_once_listening(notify, tmp_path):
    sock = str(tmp_path / "sock")
    env = server_env("nbdsrv", dict(os.environ, NOTIFY_SOCKET=notify.path))
    proc = subprocess.Popen([NBDSRV, "-f", "-U", sock, "memory",
                             "size=%d" % DISK_SIZE],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    try:
        assert notify.next().get("READY") == "1"
        # READY=1 means a client can connect now, without retrying.
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(sock)
        check_disk("nbd+unix:///?socket=%s" % sock)
        proc.send_signal(signal.SIGTERM)
        assert notify.next().get("STOPPING") == "1"
    finally:
        status, err = stop(proc)
    assert status == 0, err


def test_notify_under_socket_activation(notify, tmp_path):
    sock = str(tmp_path / "sock")
    proc = socket_activate(sock, [NBDSRV, "-f", "memory",
                                  "size=%d" % DISK_SIZE],
                           setenv=["NOTIFY_SOCKET=" + notify.path])
    try:
        # systemd-socket-activate starts the server at the first client.
        with socket.socket(socket.AF_UNIX) as first:
            first.connect(sock)
            assert notify.next().get("READY") == "1"
        check_disk("nbd+unix:///?socket=%s" % sock)
    finally:
        status, err = stop(proc)
    assert status == 0, err


def test_no_notify_socket_no_message(tmp_path):
    """Outside systemd nbdsrv starts as before (sd_notify is a no-op)."""
    sock = str(tmp_path / "sock")
    env = server_env("nbdsrv")
    env.pop("NOTIFY_SOCKET", None)
    r = subprocess.run([NBDSRV, "-U", sock, "memory", "size=%d" % DISK_SIZE,
                        "--run", 'nbdinfo --size "$uri"'], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=WAIT_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(DISK_SIZE)


# The units, as built (ExecStart with the configured bindir).

def unit_files():
    return [os.path.join(UNIT_DIR, "nbdsrv.service"),
            os.path.join(UNIT_DIR, "nbdsrv-standalone.service"),
            os.path.join(UNIT_SRC_DIR, "nbdsrv.socket")]


def read_unit(path):
    """{section: [(key, value), ...]} of a unit file."""
    sections, current = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), [])
                continue
            key, value = line.split("=", 1)
            current.append((key, value))
    return sections


def exec_start(path, binary, overrides):
    """The ExecStart argv of unit PATH as systemd builds it: the
    Environment= defaults, then OVERRIDES (what /etc/default/nbdsrv
    would set), an unbraced $VAR split into words; the unit's binary
    replaced by BINARY."""
    service = dict(read_unit(path)["Service"])
    env = {}
    for key, value in read_unit(path)["Service"]:
        if key == "Environment":
            name, val = shlex.split(value)[0].split("=", 1)
            env[name] = val
    env.update(overrides)
    argv = []
    for word in service["ExecStart"].split():
        if word.startswith("$"):
            argv += env[word[1:]].split()
        else:
            argv.append(word)
    assert os.path.basename(argv[0]) == "nbdsrv"
    return [binary] + argv[1:]


def test_units_verify(tmp_path):
    """systemd-analyze verify: syntax, and that ExecStart can run (the
    configured bindir is swapped for the build tree's)."""
    for path in unit_files():
        text = open(path).read()
        if os.path.basename(path).endswith(".service"):
            service = dict(read_unit(path)["Service"])
            assert service["Type"] == "notify"
            installed = service["ExecStart"].split()[0]
            text = text.replace(installed, NBDSRV)
        (tmp_path / os.path.basename(path)).write_text(text)
    names = sorted(os.listdir(tmp_path))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no"] +
                       ["./" + n for n in names], cwd=tmp_path,
                       capture_output=True, text=True, timeout=WAIT_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_socket_unit_and_its_service(tmp_path):
    socket_unit = dict(read_unit(unit_files()[2])["Socket"])
    assert socket_unit["ListenStream"] == "10809"
    cmd = exec_start(unit_files()[0], NBDSRV,
                     {"NBDSRV_ARGS": "memory size=%d" % DISK_SIZE})
    # The unit's own default serves a memory disk too.
    assert exec_start(unit_files()[0], NBDSRV, {})[-2:] == ["memory",
                                                           "size=1G"]
    sock = str(tmp_path / "sock")
    proc = socket_activate(sock, cmd)
    try:
        check_disk("nbd+unix:///?socket=%s" % sock)
    finally:
        status, err = stop(proc)
    assert status == 0, err


def test_standalone_unit(notify, tmp_path):
    sock = str(tmp_path / "sock")
    assert "-p 10809" in " ".join(exec_start(unit_files()[1], NBDSRV, {}))
    cmd = exec_start(unit_files()[1], NBDSRV,
                     {"NBDSRV_LISTEN": "-U " + sock,
                      "NBDSRV_ARGS": "memory size=%d" % DISK_SIZE})
    env = server_env("nbdsrv", dict(os.environ, NOTIFY_SOCKET=notify.path))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    try:
        assert notify.next().get("READY") == "1"
        check_disk("nbd+unix:///?socket=%s" % sock)
    finally:
        status, err = stop(proc)
    assert status == 0, err
