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
FILTERDIR = os.path.join(BUILD, "filters")
BINARIES = {"nbdsrv": NBDSRV, "nbdkit": NBDKIT}

# Under `make check VALGRIND=1` every nbdsrv the tests start by
# BINARIES["nbdsrv"] runs under valgrind's memcheck, through a wrapper
# that logs each process's errors to a file of its own; a test fails if
# a log is not empty once it is over.  Leaks are left to the ASan build
# (LeakSanitizer): here we look for what ASan cannot see, reads of
# uninitialised memory.
VALGRIND_DIR = (os.path.join(BUILD, "valgrind")
                if os.environ.get("NBDSRV_VALGRIND") else None)
# Valgrind makes start-up slower; hang protection only.
START_TIMEOUT = 60 if VALGRIND_DIR else 10


def _valgrind_wrapper():
    """Write the wrapper and an empty log directory; return its path."""
    logs = os.path.join(VALGRIND_DIR, "logs")
    os.makedirs(logs, exist_ok=True)
    for f in os.listdir(logs):
        os.unlink(os.path.join(logs, f))
    wrapper = os.path.join(VALGRIND_DIR, "nbdsrv")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\n"
                "exec valgrind -q --vgdb=no --leak-check=no --error-limit=no "
                "--log-file=%s/vg.%%p %s \"$@\"\n" % (logs, NBDSRV))
    os.chmod(wrapper, 0o755)
    return wrapper


if VALGRIND_DIR:
    BINARIES["nbdsrv"] = _valgrind_wrapper()


def _pid_alive(pid):
    """PID runs and is not a zombie waiting to be reaped."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def valgrind_reports():
    """The non-empty valgrind logs written since the last call (each is
    removed once read)."""
    if not VALGRIND_DIR:
        return []
    logs = os.path.join(VALGRIND_DIR, "logs")
    reports = []
    for f in sorted(os.listdir(logs)):
        path = os.path.join(logs, f)
        # A live process still writes to its log: read it once it ends.
        if os.path.exists("/proc/%s" % f.split(".")[-1]) and \
                _pid_alive(int(f.split(".")[-1])):
            continue
        with open(path, errors="replace") as fp:
            text = fp.read()
        os.unlink(path)
        if text.strip():
            reports.append(text[:6000])
    return reports

# Under `make check SANITIZE=1` the server is built with ASan and UBSan:
# make UBSan stop at the first error, and LeakSanitizer report at exit
# (the SIGTERM path returns from main, so leaks show there).  A report
# on the server's stderr fails the test that started the server.
SANITIZER_ENV = {
    # allocator_may_return_null: an impossible malloc returns NULL, as
    # with glibc, so out-of-memory paths behave as unsanitized.
    # quarantine_size_mb: freed memory ASan holds back to catch
    # use-after-free; its 256 MiB default would count in the peak RSS
    # that the memory-bound tests measure.
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:print_summary=1:"
                    "allocator_may_return_null=1:quarantine_size_mb=32",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    # Leaks inside Debian's filter binaries are not ours (lsan.supp).
    "LSAN_OPTIONS": "suppressions=" + os.path.join(ROOT, "tests",
                                                   "lsan.supp"),
}
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:",
                     "ERROR: LeakSanitizer")

# Every server start_server started, until its stderr has been checked.
_unchecked = []

_runtimes = None


def sanitizer_runtimes():
    """The ASan runtime library nbdsrv is linked with: none for a
    normal build."""
    global _runtimes
    if _runtimes is None:
        try:
            out = subprocess.run(["ldd", NBDSRV], capture_output=True,
                                 text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        _runtimes = [line.split("=>")[1].split()[0]
                     for line in out.splitlines()
                     if "=>" in line and "libasan" in line]
    return _runtimes


def server_env(impl, env=None):
    """The environment to start IMPL in: nbdsrv gets the sanitizer
    options."""
    env = dict(os.environ if env is None else env)
    if impl != "nbdkit":
        for key, value in SANITIZER_ENV.items():
            env.setdefault(key, value)
    return env


def plugin_path(name):
    """Path of one of our own plugins in the build tree."""
    return os.path.join(PLUGINDIR, "nbdkit-%s-plugin.so" % name)


def filter_path(name):
    """Path of one of our own filters in the build tree: give it to
    Debian's nbdkit as --filter=PATH to run our filter under nbdkit."""
    return os.path.join(FILTERDIR, "nbdkit-%s-filter.so" % name)


class Server:
    """A running server process listening on a Unix socket."""

    def __init__(self, impl, args, sock, proc):
        self.impl = impl
        self.args = args
        self.sock = sock
        self.proc = proc
        self.pid = proc.pid
        self.uri = "nbd+unix:///?socket=%s" % sock
        self._stderr = None

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
        """Stop the server; return all it wrote to stderr.  Kept, so a
        second call (and the sanitizer check) sees the same text."""
        self.stop()
        if self._stderr is None:
            self._stderr = self.proc.stderr.read().decode(errors="replace")
        return self._stderr

    def sanitizer_report(self):
        """The sanitizer report on the stderr of this (exited) server,
        or None.  nbdkit is not ours to check."""
        if self.impl == "nbdkit":
            return None
        text = self.stderr_text()
        for marker in SANITIZER_MARKERS:
            i = text.find(marker)
            if i != -1:
                start = text.rfind("\n", 0, max(0, i - 200)) + 1
                return text[start:start + 6000]
        return None


def start_server(impl, args, sock, env=None, timeout=START_TIMEOUT,
                 binary=None):
    """Start IMPL in the foreground on SOCK and wait until it listens.
    BINARY replaces IMPL's usual binary (an installed nbdsrv)."""
    if impl == "nbdkit" and sanitizer_runtimes() and any(
            str(a).startswith(BUILD + os.sep) for a in args):
        pytest.skip("nbdkit cannot load the instrumented plugins of a "
                    "sanitized build; the comparison runs unsanitized")
    cmd = [binary or BINARIES[impl], "-f", "-U", sock] + list(args)
    env = server_env(impl, env)
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
    server = Server(impl, args, sock, proc)
    _unchecked.append(server)
    return server


def check_sanitizers(only_exited=True):
    """Fail if a server that has exited left a sanitizer report.  Live
    servers (shared by a module) are checked once they are stopped."""
    reports = []
    for s in list(_unchecked):
        if only_exited and s.alive():
            continue
        if not only_exited:
            s.stop()
        _unchecked.remove(s)
        report = s.sanitizer_report()
        if report:
            reports.append("%s %s:\n%s" % (s.impl, " ".join(s.args),
                                           report))
    reports += ["valgrind:\n" + r for r in valgrind_reports()]
    if reports:
        pytest.fail("sanitizer report on the server's stderr:\n"
                    + "\n\n".join(reports), pytrace=False)


@pytest.fixture(autouse=True, scope="module")
def _sanitizers_module():
    """After a module, once its shared servers are stopped."""
    yield
    check_sanitizers(only_exited=False)


@pytest.fixture(autouse=True)
def _sanitizers_test():
    """After each test, once the servers it started are stopped."""
    yield
    check_sanitizers()


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
    # _sanitizers_test, set up first, runs after this and checks them.


@pytest.fixture(params=["nbdsrv", "nbdkit"])
def impl(request):
    """Run a test once against nbdsrv and once against Debian's nbdkit
    (on a sanitized build the nbdkit half is deselected, see below)."""
    return request.param


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "nbdkit_plugin: the test starts Debian's nbdkit with one "
        "of our plugins (deselected on a sanitized build)")
    config.addinivalue_line(
        "markers", "unsanitized: the test measures or locks the server's "
        "memory, which ASan's shadow memory and its no-op mlock and "
        "mlockall make meaningless (deselected on a sanitized build)")


def pytest_collection_modifyitems(config, items):
    """On a sanitized build (make check SANITIZE=1) leave out the nbdkit
    half of the comparison tests: nbdkit cannot load the instrumented
    test plugins without the ASan runtime preloaded, and with it
    preloaded it deadlocks at exit (in libp11-kit's destructor).  They
    run in the normal build; here they are deselected, not skipped, so
    the summary counts only tests that ran.  Tests that start nbdkit
    with one of our plugins are marked nbdkit_plugin and go too, and so
    do those marked unsanitized."""
    if not sanitizer_runtimes():
        return
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        if (params is not None and params.params.get("impl") == "nbdkit"
                or item.get_closest_marker("nbdkit_plugin")
                or item.get_closest_marker("unsanitized")):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# ------------------------------------------------------------- Ceph

@pytest.fixture(scope="session")
def ceph():
    """One throw-away Ceph cluster (ceph_cluster.py, authentication
    off) for every rbd test of the session, stopped by PID at the end.
    make check installs its packages, so a missing one is an error."""
    from ceph_cluster import CephCluster
    cluster = CephCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def ceph_cephx():
    """The same with cephx on, for the tests of id= and keyring=."""
    from ceph_cluster import CephCluster
    cluster = CephCluster(cephx=True).start()
    yield cluster
    cluster.stop()
