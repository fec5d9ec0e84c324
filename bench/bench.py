#!/usr/bin/python3
"""Benchmark nbdsrv against nbdkit, qemu-nbd and nbd-server.

Run with Debian's /usr/bin/python3 (it has libnbd's `nbd` module):

    /usr/bin/python3 bench/bench.py --quick             # about 2 minutes
    /usr/bin/python3 bench/bench.py --json out.json     # about 10 minutes

Each server is started in turn on a Unix socket (and then on
127.0.0.1 with a free port for the TCP cases), driven by fio's nbd
engine, nbdcopy and a libnbd connect loop, then stopped by its PID.
bench/README.md explains every column of the table.
"""

import argparse
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

try:
    import nbd
except ImportError:
    sys.exit("bench.py needs libnbd's Python module: run it with "
             "/usr/bin/python3 and install python3-libnbd")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
DISK_SIZE = GiB
DEBIAN_PLUGINDIR = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins"
SHM_DIR = "/dev/shm"
# The second image, for the file servers' disk rows: on a disk file
# system by convention (the kernel's page cache holds it once written,
# so those rows measure the path through the page cache, not the disk).
DISK_DIR = "/var/tmp"
NBDCOPY_REQUEST_SIZE = 256 * KiB
CONNECT_MAX = 100000        # connection-rate loop: at most this many
START_TIMEOUT = 10.0        # a server must accept within this time
STOP_TIMEOUT = 5.0          # ... and exit this long after SIGTERM

# Quick mode: one round, short runs.  Full mode: three rounds, medians.
MODES = {
    "quick": {"repeats": 1, "runtime": 0.6, "connect": 0.6,
              "limit": 0.3, "budget": 150},
    "full": {"repeats": 3, "runtime": 1.5, "connect": 1.5,
             "limit": 0.5, "budget": 720},
}


# ---------------------------------------------------------------- /proc

def proc_stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (field 3 on)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()


def proc_children_map():
    """Map every PID on the machine to the list of its children."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(proc_stat_fields(name)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    return children


def proc_descendants(pid):
    """PIDs of all living descendants of PID (nbd-server forks)."""
    children = proc_children_map()
    out, todo = [], [pid]
    while todo:
        for kid in children.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def proc_ticks(pid):
    """utime+stime+cutime+cstime of PID in clock ticks (0 if gone)."""
    try:
        fields = proc_stat_fields(pid)
    except OSError:
        return 0
    return sum(int(x) for x in fields[11:15])


def tree_ticks(pid, forks):
    """CPU ticks of a server: its threads, its reaped children and,
    for a forking server, its living children."""
    total = proc_ticks(pid)
    if forks:
        total += sum(proc_ticks(kid) for kid in proc_descendants(pid))
    return total


def proc_status_number(pid, key):
    """The number on a line of /proc/PID/status (VmHWM in kB, Threads),
    or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_alive(pid):
    """True while PID exists and is not a zombie."""
    try:
        return proc_stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def become_subreaper():
    """Make orphaned descendants (nbd-server's daemon) our children, so
    that we can wait for them after stopping them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0      # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap(pid, timeout):
    """Wait up to TIMEOUT for our child PID to exit; True if reaped."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            # Not our child (no subreaper): wait until it is gone.
            if not proc_alive(pid):
                return True
            done = 0
        if done == pid:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def stop_pid(pid):
    """SIGTERM, wait, SIGKILL, wait: PID is one we started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        if reap(pid, STOP_TIMEOUT):
            return


def reap_strays():
    """Reap any orphan that became our child as subreaper (all the
    servers were stopped already; nothing else of ours is running)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class RssSampler:
    """Peak VmHWM over a forking server and its children, sampled."""

    def __init__(self, pid, period=0.5):
        self.pid, self.period, self.peak = pid, period, 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def sample(self):
        for p in [self.pid] + proc_descendants(self.pid):
            self.peak = max(self.peak, proc_status_number(p, "VmHWM") or 0)

    def run(self):
        while not self.stopping.wait(self.period):
            self.sample()

    def stop(self):
        self.stopping.set()
        self.thread.join()
        self.sample()
        return self.peak


# ---------------------------------------------------------------- servers

def free_port():
    """A free TCP port on 127.0.0.1 (closed again; servers bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Listen:
    """Where one server instance listens: a Unix socket in our temporary
    directory, 127.0.0.1 with a free port, or both."""

    def __init__(self, transports, tmpdir, name):
        self.transports = transports
        self.path = os.path.join(tmpdir, name + ".sock")
        self.port = None
        self.sockets = []

    def choose_port(self):
        if "tcp" in self.transports:
            self.port = free_port()

    def bind(self):
        """Listening sockets for socket activation, in LISTEN_FDS order;
        the kernel picks the TCP port, so there is no race for it."""
        if "unix" in self.transports:
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if os.path.exists(self.path):
                os.unlink(self.path)
            u.bind(self.path)
            u.listen(128)
            self.sockets.append(u)
        if "tcp" in self.transports:
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.bind(("127.0.0.1", 0))
            t.listen(128)
            self.port = t.getsockname()[1]
            self.sockets.append(t)

    def close(self):
        for s in self.sockets:
            s.close()
        self.sockets = []

    def uri(self, transport, export=""):
        if transport == "unix":
            return f"nbd+unix:///{export}?socket={self.path}"
        if transport == "tls":
            return f"nbds://127.0.0.1:{self.port}/{export}"
        return f"nbd://127.0.0.1:{self.port}/{export}"

    def qemu_args(self):
        if self.transports == ("unix",):
            return ["-k", self.path]
        return ["-b", "127.0.0.1", "-p", str(self.port)]


def activation_preexec(fds):
    """In the child: put FDS at 3, 4, ... and set LISTEN_FDS/LISTEN_PID
    (our PID is the server's after exec); every other descriptor is
    closed by exec."""
    def preexec():
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd >= 3 + len(fds):
                try:
                    fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
                except OSError:
                    pass
        os.environ["LISTEN_FDS"] = str(len(fds))
        os.environ["LISTEN_PID"] = str(os.getpid())
    return preexec


class ServerSpec:
    """One server configuration: how to start it and what it compares to.

    backing: "memory" or "file".  ref: the nbdsrv configuration that the
    ratio columns divide by this one (like against like).  listen:
    "activation" (we pass a Unix and a TCP socket, LISTEN_FDS=2),
    "dual" (one process listens on both), "separate" (one instance per
    transport).  build(ctx, listen) returns (argv, pidfile or None).
    """

    def __init__(self, key, short, backing, ref, build, listen,
                 forks=False, export="", cases=None, tls=False):
        self.key, self.short, self.backing = key, short, backing
        self.ref, self.build, self.listen = ref, build, listen
        self.forks, self.export = forks, export
        self.cases = cases              # case keys, or None for all
        self.tls = tls                  # also serves TLS on the TCP socket
        self.unavailable = None         # reason, when it cannot run

    def instances(self):
        if self.listen == "separate":
            return [("unix",), ("tcp",)]
        if self.tls:
            return [("unix", "tcp", "tls")]
        return [("unix", "tcp")]


def nbdkit_like(program, plugin_args):
    """nbdsrv and nbdkit take the same command line; both listen on the
    sockets we pass (nbdkit 1.32 cannot do -U and -p at once)."""
    def build(ctx, listen):
        return [program, "-f", "--exit-with-parent", *plugin_args(ctx)], None
    return build


def qemu_nbd(aio, image="image"):
    """-t: keep serving after a client leaves; -e 64: up to 64 clients
    (the default is one).  IMAGE: the ctx attribute naming the file."""
    def build(ctx, listen):
        return ["qemu-nbd", "-t", "-e", "64", "-f", "raw", "--aio=" + aio,
                "--cache=writeback", *listen.qemu_args(),
                getattr(ctx, image)], None
    return build


def nbd_server(ctx, listen):
    """nbd-server reads a config file; it daemonises and writes a PID
    file (with -d it would serve one client and exit)."""
    conf = os.path.join(ctx.tmpdir, "nbd-server.conf")
    pidfile = os.path.join(ctx.tmpdir, "nbd-server.pid")
    with open(conf, "w") as f:
        f.write("[generic]\n"
                f"unixsock = {listen.path}\n"
                "duallisten = true\n"
                f"port = {listen.port}\n"
                "listenaddr = 127.0.0.1\n"
                "[disk]\n"
                f"exportname = {ctx.image}\n")
    return ["nbd-server", "-C", conf, "-p", pidfile], pidfile


# Filter stacks over the memory plugin, each run by nbdsrv and by
# Debian's nbdkit with the same command line, on the cases that show
# what a layer costs per request.  nbdsrv finds its own filters first,
# nbdkit its own.
STACKS = {
    "3pass": ["--filter=nofilter"] * 3,
    "cow-cache": ["--filter=cow", "--filter=cache"],
}
STACK_CASES = ("4k-randread-qd32", "4k-randwrite-qd32", "1m-write-qd8")


def metrics_spec(ctx, mem):
    """nbdsrv with --metrics on (a Unix socket nobody scrapes during
    the run): what counting costs per request."""
    args = lambda c: ["--metrics=unix:" + os.path.join(c.tmpdir,
                                                       "metrics.sock")] \
        + mem(c)
    return ServerSpec("nbdsrv-metrics", "srv-metr", "memory",
                      "nbdsrv-memory", nbdkit_like(ctx.nbdsrv, args),
                      "activation", cases=STACK_CASES)


def stack_specs(ctx, mem):
    specs = []
    for name, filters in STACKS.items():
        args = lambda c, f=filters: f + mem(c)
        specs.append(ServerSpec(f"nbdsrv-{name}", f"srv-{name}", "memory",
                                None, nbdkit_like(ctx.nbdsrv, args),
                                "activation", cases=STACK_CASES))
        specs.append(ServerSpec(f"nbdkit-{name}", f"kit-{name}", "memory",
                                f"nbdsrv-{name}", nbdkit_like("nbdkit", args),
                                "activation", cases=STACK_CASES))
    return specs


# TLS (X.509, TCP loopback): nbdsrv and Debian's nbdkit with the same
# certificates and command line.  --tls=on, so the plain readiness probe
# and the memory fill still work; fio's cases ask for TLS (nbds://).
TLS_CASES = ("4k-randread-qd32-tls", "1m-read-qd8-tls", "1m-write-qd8-tls")


def tls_specs(ctx, mem):
    args = lambda c: ["--tls=on", "--tls-certificates=" + c.tls.server_dir,
                      *mem(c)]
    return [
        ServerSpec("nbdsrv-tls", "srv-tls", "memory", None,
                   nbdkit_like(ctx.nbdsrv, args), "activation",
                   cases=TLS_CASES, tls=True),
        ServerSpec("nbdkit-tls", "kit-tls", "memory", "nbdsrv-tls",
                   nbdkit_like("nbdkit", args), "activation",
                   cases=TLS_CASES, tls=True),
    ]


class TlsClient:
    """Certificates for the TLS cases, made with certtool, and how to run
    fio so that libnbd trusts them.  fio's nbd engine cannot pass a
    certificate directory (URIs may not name local files), so fio runs
    with HOME pointing at a directory holding .pki/libnbd/ca-cert.pem;
    libnbd reads that only for non-root users, so as root fio runs as
    nobody (setpriv), writing its report to a directory nobody may use.
    """

    def __init__(self, tmpdir):
        d = os.path.join(tmpdir, "tls")
        self.server_dir = os.path.join(d, "server")
        self.home = os.path.join(d, "home")
        pki = os.path.join(self.home, ".pki", "libnbd")
        self.outdir = os.path.join(d, "out")
        for path in (self.server_dir, pki, self.outdir):
            os.makedirs(path)
        self.certtool(d, "--generate-privkey", "--key-type=ecdsa",
                      "--outfile", "ca-key.pem")
        self.certtool(d, "--generate-self-signed", "--load-privkey",
                      "ca-key.pem", "--outfile", "ca-cert.pem",
                      template="cn = nbdsrv bench CA\nca\ncert_signing_key\n")
        self.certtool(d, "--generate-privkey", "--key-type=ecdsa",
                      "--outfile", "server/server-key.pem")
        self.certtool(d, "--generate-certificate",
                      "--load-ca-certificate", "ca-cert.pem",
                      "--load-ca-privkey", "ca-key.pem",
                      "--load-privkey", "server/server-key.pem",
                      "--outfile", "server/server-cert.pem",
                      template="cn = localhost\nip_address = 127.0.0.1\n"
                               "tls_www_server\nencryption_key\n"
                               "signing_key\n")
        for dst in (self.server_dir, pki):
            shutil.copy(os.path.join(d, "ca-cert.pem"), dst)
        self.env = dict(os.environ, HOME=self.home)
        self.prefix = []
        if os.geteuid() == 0:
            self.prefix = ["setpriv", "--reuid=65534", "--regid=65534",
                           "--clear-groups"]
            for path in (tmpdir, d, self.home,
                         os.path.join(self.home, ".pki"), pki):
                os.chmod(path, 0o711)
            os.chmod(os.path.join(pki, "ca-cert.pem"), 0o644)
            os.chmod(self.outdir, 0o777)

    @staticmethod
    def certtool(cwd, *args, template=None):
        argv = ["certtool", *args]
        if template is not None:
            path = os.path.join(cwd, "template.info")
            with open(path, "w") as f:
                f.write(template)
            argv += ["--template", path]
        r = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("certtool: " + r.stderr.strip()[-300:])


# The file servers again on an image on the disk (DISK_DIR, page-cached),
# for 1 MiB sequential reads only: the tmpfs columns show the same row
# from /dev/shm.  nbdsrv's file plugin splices these reads from the file
# to the socket (read-source.h).
DISK_CASES = ("1m-read-qd8",)


def disk_specs(ctx):
    nbdsrv_file = lambda c: [c.nbdsrv_file_plugin, "file=" + c.disk_image]
    kit_file = lambda c: ["file", "file=" + c.disk_image]
    return [
        ServerSpec("nbdsrv-file-disk", "srv-fdisk", "file", None,
                   nbdkit_like(ctx.nbdsrv, nbdsrv_file), "activation",
                   cases=DISK_CASES),
        ServerSpec("nbdkit-file-disk", "kit-fdisk", "file",
                   "nbdsrv-file-disk", nbdkit_like("nbdkit", kit_file),
                   "activation", cases=DISK_CASES),
        ServerSpec("qemu-nbd-threads-disk", "qthr-fdisk", "file",
                   "nbdsrv-file-disk", qemu_nbd("threads", "disk_image"),
                   "separate", cases=DISK_CASES),
        ServerSpec("qemu-nbd-io_uring-disk", "qurg-fdisk", "file",
                   "nbdsrv-file-disk", qemu_nbd("io_uring", "disk_image"),
                   "separate", cases=DISK_CASES),
    ]


def make_specs(ctx):
    mem = lambda c: ["memory", f"size={DISK_SIZE}"]
    nbdsrv_file = lambda c: [c.nbdsrv_file_plugin, "file=" + c.image]
    kit_file = lambda c: ["file", "file=" + c.image]
    return [
        ServerSpec("nbdsrv-memory", "srv-mem", "memory", None,
                   nbdkit_like(ctx.nbdsrv, mem), "activation"),
        ServerSpec("nbdkit-memory", "kit-mem", "memory", "nbdsrv-memory",
                   nbdkit_like("nbdkit", mem), "activation"),
        ServerSpec("nbdsrv-file", "srv-file", "file", None,
                   nbdkit_like(ctx.nbdsrv, nbdsrv_file), "activation"),
        ServerSpec("nbdkit-file", "kit-file", "file", "nbdsrv-file",
                   nbdkit_like("nbdkit", kit_file), "activation"),
        ServerSpec("qemu-nbd-threads", "qemu-thr", "file", "nbdsrv-file",
                   qemu_nbd("threads"), "separate"),
        ServerSpec("qemu-nbd-io_uring", "qemu-uring", "file", "nbdsrv-file",
                   qemu_nbd("io_uring"), "separate"),
        ServerSpec("nbd-server", "nbd-srv", "file", "nbdsrv-file",
                   nbd_server, "dual", forks=True, export="disk"),
    ] + disk_specs(ctx) + stack_specs(ctx, mem) + tls_specs(ctx, mem) + [
        metrics_spec(ctx, mem)]


def check_available(spec):
    """Why SPEC cannot run here, or None."""
    for tool, keys in (("nbdkit", ("nbdkit-memory", "nbdkit-file",
                                   "nbdkit-file-disk")),
                       ("qemu-nbd", ("qemu-nbd-threads",
                                     "qemu-nbd-io_uring",
                                     "qemu-nbd-threads-disk",
                                     "qemu-nbd-io_uring-disk")),
                       ("nbd-server", ("nbd-server",))):
        if spec.key in keys and shutil.which(tool) is None:
            return f"{tool} is not installed"
    if spec.tls and shutil.which("certtool") is None:
        return "certtool is not installed (gnutls-bin)"
    if spec.key in ("qemu-nbd-io_uring", "qemu-nbd-io_uring-disk"):
        out = run_text(["qemu-nbd", "--help"])
        if "io_uring" not in out:
            return "this qemu-nbd has no --aio=io_uring"
    return None


def run_text(argv, timeout=10):
    """stdout+stderr of a short command, '' if it cannot run."""
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


class ServerInstance:
    """A running server listening on TRANSPORTS; stop() always stops
    and reaps it."""

    def __init__(self, ctx, spec, transports):
        self.spec = spec
        name = f"{spec.key}-{'+'.join(transports)}"
        self.listen = Listen(transports, ctx.tmpdir, name)
        self.log = os.path.join(ctx.tmpdir, name + ".log")
        self.pid, self.sampler = None, None
        preexec = None
        if spec.listen == "activation":
            self.listen.bind()
            preexec = activation_preexec(
                [s.fileno() for s in self.listen.sockets])
        else:
            self.listen.choose_port()
        self.uris = {t: self.listen.uri(t, spec.export) for t in transports}
        argv, pidfile = spec.build(ctx, self.listen)
        self.argv = argv
        try:
            with open(self.log, "wb") as log:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, preexec_fn=preexec,
                    close_fds=preexec is None)
        finally:
            self.listen.close()         # the server has its copies
        try:
            self.pid = self.proc.pid if pidfile is None else \
                self.daemon_pid(pidfile)
            for t, uri in self.uris.items():
                if t != "tls":          # the plain TCP probe covers it
                    self.wait_ready(uri)
            if spec.forks:
                self.sampler = RssSampler(self.pid)
        except BaseException:
            self.stop()
            raise

    def daemon_pid(self, pidfile):
        """The parent exits once the daemon has forked; read its PID."""
        self.proc.wait(timeout=START_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with open(pidfile) as f:
                    return int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        raise RuntimeError(f"no PID in {pidfile}: {self.log_tail()}")

    def wait_ready(self, uri):
        """Until a full NBD handshake succeeds (not merely a socket)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if not proc_alive(self.pid):
                raise RuntimeError("exited at start: " + self.log_tail())
            try:
                h = nbd.NBD()
                h.connect_uri(uri)
                size = h.get_size()
                h.shutdown()
                if size < DISK_SIZE:
                    raise RuntimeError(f"export is only {size} bytes")
                return
            except nbd.Error as e:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"no handshake on {uri} within "
                                       f"{START_TIMEOUT:.0f}s: {e}; "
                                       + self.log_tail())
                time.sleep(0.05)

    def log_tail(self):
        try:
            with open(self.log, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return ""

    def ticks(self):
        return tree_ticks(self.pid, self.spec.forks)

    def rss_kib(self):
        return proc_status_number(self.pid, "VmRSS")

    def peak_kib(self):
        if self.sampler is not None:
            return max(self.sampler.stop(),
                       proc_status_number(self.pid, "VmHWM") or 0)
        return proc_status_number(self.pid, "VmHWM")

    def stop(self):
        if self.sampler is not None:
            self.sampler.stop()
        if self.pid is not None:
            kids = proc_descendants(self.pid)
            stop_pid(self.pid)
            for kid in kids:                    # nbd-server's children
                stop_pid(kid)
        if self.proc.poll() is None:
            stop_pid(self.proc.pid)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        if os.path.exists(self.listen.path):
            os.unlink(self.listen.path)


# ---------------------------------------------------------------- cases

class Case:
    """conns > 1: the case opens that many connections to one export,
    which is only safe (and only done by nbdcopy) with multi-conn."""

    def __init__(self, key, label, transport, metric, fio=None, kind="fio",
                 conns=1):
        self.key, self.label, self.transport = key, label, transport
        self.metric, self.fio, self.kind = metric, fio, kind
        self.conns = conns


def fio_case(key, label, transport, rw, bs, iodepth, numjobs, conns=1):
    metric = "IOPS" if bs == "4k" else "MiB/s"
    return Case(key, label, transport, metric,
                {"rw": rw, "bs": bs, "iodepth": iodepth, "numjobs": numjobs},
                conns=conns)


CASES = [
    fio_case("4k-randread-qd1", "4k randread QD1", "unix",
             "randread", "4k", 1, 1),
    fio_case("4k-randread-qd32", "4k randread QD32", "unix",
             "randread", "4k", 16, 2),
    fio_case("4k-randwrite-qd32", "4k randwrite QD32", "unix",
             "randwrite", "4k", 16, 2),
    fio_case("1m-read-qd8", "1M seq read QD8", "unix", "read", "1M", 8, 1),
    fio_case("1m-write-qd8", "1M seq write QD8", "unix", "write", "1M", 8, 1),
    Case("nbdcopy-1g", "nbdcopy 1G to null:", "unix", "MiB/s",
         kind="nbdcopy"),
    Case("connect", "connect+4k read", "unix", "conn/s", kind="connect"),
    # Aggregate throughput of 4 connections to one export (multi-conn):
    # 4 fio jobs of QD8 each, and nbdcopy with 4 connections and 4
    # threads (nbdcopy opens no more connections than threads, and its
    # default thread count is the number of cores).
    fio_case("4k-randread-4conn", "4k randread 4 conns QD8", "unix",
             "randread", "4k", 8, 4, conns=4),
    Case("nbdcopy-1g-4conn", "nbdcopy 1G 4 conns", "unix", "MiB/s",
         kind="nbdcopy", conns=4),
    fio_case("4k-randread-qd32-tcp", "4k randread QD32 TCP", "tcp",
             "randread", "4k", 16, 2),
    fio_case("4k-randwrite-qd32-tcp", "4k randwrite QD32 TCP", "tcp",
             "randwrite", "4k", 16, 2),
    fio_case("1m-read-qd8-tcp", "1M seq read QD8 TCP", "tcp",
             "read", "1M", 8, 1),
    fio_case("1m-write-qd8-tcp", "1M seq write QD8 TCP", "tcp",
             "write", "1M", 8, 1),
    fio_case("4k-randread-qd32-tls", "4k randread QD32 TLS", "tls",
             "randread", "4k", 16, 2),
    fio_case("1m-read-qd8-tls", "1M seq read QD8 TLS", "tls",
             "read", "1M", 8, 1),
    fio_case("1m-write-qd8-tls", "1M seq write QD8 TLS", "tls",
             "write", "1M", 8, 1),
]

# Which machine limit bounds a case: (limit key, how to compare).
CASE_LIMITS = {
    "4k-randread-qd1": "pingpong_iops",
    "1m-read-qd8": "unix_mib_s",
    "1m-write-qd8": "unix_mib_s",
    "nbdcopy-1g": "unix_mib_s",
    "nbdcopy-1g-4conn": "unix_mib_s",
    "1m-read-qd8-tcp": "tcp_mib_s",
    "1m-write-qd8-tcp": "tcp_mib_s",
}


def run_fio(ctx, uri, name, opts, runtime=None, size=None, tls=None):
    """One fio run: its rates, latency and the requests completed.  TLS:
    a TlsClient, for an nbds:// URI."""
    out = os.path.join(tls.outdir if tls else ctx.tmpdir, "fio.json")
    argv = (tls.prefix if tls else []) + ["fio", "--name=" + name, "--ioengine=nbd", "--uri=" + uri,
            "--rw=" + opts["rw"], "--bs=" + opts["bs"],
            f"--iodepth={opts['iodepth']}", f"--numjobs={opts['numjobs']}",
            "--group_reporting", "--norandommap", "--randrepeat=0",
            "--output-format=json", "--output=" + out]
    if runtime is not None:
        argv += [f"--runtime={int(runtime * 1000)}ms", "--time_based"]
        limit = runtime + 30
    else:
        argv += [f"--size={size}"]
        limit = 120
    if os.path.exists(out):
        os.unlink(out)
    r = subprocess.run(argv, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=limit,
                       env=tls.env if tls else None)
    try:
        with open(out) as f:
            job = json.load(f)["jobs"][0]
    except (OSError, ValueError, IndexError, KeyError):
        raise RuntimeError(f"fio exit {r.returncode}: "
                           + (r.stderr or r.stdout).strip()[-300:])
    if r.returncode != 0 or job.get("error"):
        raise RuntimeError(f"fio exit {r.returncode}, error "
                           f"{job.get('error')}: " + r.stderr.strip()[-300:])
    rd, wr = job["read"], job["write"]
    ios = rd["total_ios"] + wr["total_ios"]
    if ios == 0:
        raise RuntimeError("fio completed no request")
    side = rd if rd["total_ios"] else wr
    return {
        "iops": rd["iops"] + wr["iops"],
        "mib_s": (rd["bw_bytes"] + wr["bw_bytes"]) / MiB,
        "requests": ios,
        "lat_mean_us": side["clat_ns"]["mean"] / 1000,
        "lat_p99_us": side["clat_ns"].get("percentile", {})
                                     .get("99.000000", 0) / 1000,
    }


def run_nbdcopy(ctx, uri, conns):
    """CONNS 1: nbdcopy's defaults (one connection per core when the
    server offers multi-conn); more: exactly that many."""
    argv = ["nbdcopy", f"--request-size={NBDCOPY_REQUEST_SIZE}"]
    if conns > 1:
        argv += [f"--connections={conns}", f"--threads={conns}"]
    argv += [uri, "null:"]
    start = time.monotonic()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=120)
    seconds = time.monotonic() - start
    if r.returncode != 0:
        raise RuntimeError(f"nbdcopy exit {r.returncode}: "
                           + r.stderr.strip()[-300:])
    return {"mib_s": DISK_SIZE / MiB / seconds, "seconds": seconds,
            "requests": DISK_SIZE // NBDCOPY_REQUEST_SIZE}


def run_connect(ctx, uri):
    """Connect, handshake, one 4k read, disconnect: as many times as fit
    in ctx.connect seconds (at most CONNECT_MAX)."""
    count = 0
    start = time.monotonic()
    while count < CONNECT_MAX:
        h = nbd.NBD()
        h.connect_uri(uri)
        h.pread(4096, 0)
        h.shutdown()
        del h
        count += 1
        if time.monotonic() - start >= ctx.connect:
            break
    seconds = time.monotonic() - start
    return {"conn_s": count / seconds, "requests": count}


def can_multi_conn(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        return h.can_multi_conn()
    finally:
        h.shutdown()


def measure(ctx, inst, case):
    """Run CASE once against INST; adds the server's CPU per request."""
    uri = inst.uris[case.transport]
    if case.conns > 1 and not can_multi_conn(uri):
        raise RuntimeError(f"the export does not offer multi-conn, so "
                           f"{case.conns} connections to it would not "
                           "be safe: row left empty")
    before = inst.ticks()
    if case.kind == "fio":
        res = run_fio(ctx, uri, case.key, case.fio, runtime=ctx.runtime,
                      tls=ctx.tls if case.transport == "tls" else None)
    elif case.kind == "nbdcopy":
        res = run_nbdcopy(ctx, uri, case.conns)
    else:
        res = run_connect(ctx, uri)
    if inst.spec.forks:
        time.sleep(0.2)         # let nbd-server reap its children
    ticks = inst.ticks() - before
    res["cpu_s"] = ticks / CLK_TCK
    res["cpu_us_per_req"] = ticks / CLK_TCK * 1e6 / res["requests"]
    res["value"] = {"IOPS": res.get("iops"), "MiB/s": res.get("mib_s"),
                    "conn/s": res.get("conn_s")}[case.metric]
    return res


# ---------------------------------------------------------------- limits

def build_limits(tmpdir):
    """Compile bench/limits.c; None if there is no C compiler."""
    exe = os.path.join(tmpdir, "limits")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    r = subprocess.run([cc, "-O2", "-o", exe, os.path.join(HERE, "limits.c")],
                       capture_output=True, text=True, timeout=60)
    return exe if r.returncode == 0 else None


def limits_py(test, seconds):
    """Fallback without a C compiler (much slower: a lower bound)."""
    start, count = time.monotonic(), 0
    if test == "memcpy":
        src = bytes(64 * MiB)
        while time.monotonic() - start < seconds and count < 10000:
            bytearray(src)
            count += 1
        return count * 64 / (time.monotonic() - start)
    if test == "pingpong":
        a, b = socket.socketpair()
        with a, b:
            while time.monotonic() - start < seconds and count < 10**7:
                a.send(b"p")
                b.send(b.recv(1))
                a.recv(1)
                count += 1
        return (time.monotonic() - start) / count * 1e6
    return None                 # streams need a writer process: C only


def measure_limits(ctx):
    """memcpy, Unix and TCP streaming with 1 MiB writes, 1-byte RTT."""
    out = {}
    for test, key in (("memcpy", "memcpy_mib_s"), ("unix", "unix_mib_s"),
                      ("tcp", "tcp_mib_s"), ("pingpong", "pingpong_us")):
        if ctx.limits_exe:
            text = run_text([ctx.limits_exe, test, str(ctx.limit)],
                            timeout=ctx.limit + 30)
            try:
                out[key] = float(text.split()[1])
            except (IndexError, ValueError):
                out[key] = None
        else:
            out[key] = limits_py(test, ctx.limit)
    if out.get("pingpong_us"):
        out["pingpong_iops"] = 1e6 / out["pingpong_us"]
    return out


# ---------------------------------------------------------------- driver

class Context:
    pass


def log(ctx, msg):
    print(f"[{time.monotonic() - ctx.t0:6.1f}s] {msg}", file=sys.stderr,
          flush=True)


def fill_image(path):
    """Create the image sparse, then write every block (not zeros) so
    that reads on it are real reads; on a disk, wait until it is written
    out, so that no writeback runs during the measurements (its pages
    stay in the page cache)."""
    block = os.urandom(MiB)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, DISK_SIZE)
        for off in range(0, DISK_SIZE, MiB):
            os.pwrite(fd, block, off)
        os.fsync(fd)
    finally:
        os.close(fd)


def warm_page_cache(path):
    """Read PATH whole, so that a disk server's reads find all of it in
    the page cache.  This machine drops clean page cache on its own (an
    image written and synced lost a quarter of its cached pages within
    five idle minutes), and without this whichever server ran first in
    the disk group paid for reading the lost part back from the disk:
    nbdsrv's round 2 fell to 614 and 1575 MiB/s in runs 13 and 12."""
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, 4 * MiB):
            pass
    finally:
        os.close(fd)


def over_budget(ctx):
    return time.monotonic() - ctx.t0 > ctx.budget


def run_instance(ctx, spec, transports, rnd):
    """Start SPEC listening on TRANSPORTS, run their cases, stop it."""
    rec = ctx.results[spec.key]
    cases = [c for c in ctx.cases if c.transport in transports
             and (spec.cases is None or c.key in spec.cases)]
    if not cases or over_budget(ctx):
        return
    where = "+".join(transports)
    if spec.key.endswith("-disk"):
        warm_page_cache(ctx.disk_image)
    try:
        inst = ServerInstance(ctx, spec, transports)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        rec["errors"].append(f"round {rnd} {where} start: {e}")
        log(ctx, f"{spec.key} {where}: cannot start: {e}")
        if rnd == 0:
            spec.unavailable = f"did not start: {e}"
        return
    try:
        mem = {"transports": list(transports), "round": rnd,
               "argv": inst.argv, "idle_kib": inst.rss_kib()}
        if spec.backing == "memory":
            # Write the whole disk once, as the file servers' image is.
            start = time.monotonic()
            run_fio(ctx, next(iter(inst.uris.values())), "fill",
                    {"rw": "write", "bs": "1M", "iodepth": 8, "numjobs": 1},
                    size=DISK_SIZE)
            mem["written_bytes"] = DISK_SIZE
            mem["fill_s"] = time.monotonic() - start
        mem["after_fill_kib"] = inst.rss_kib()
        for case in cases:
            run_case(ctx, inst, case, rnd)
        mem["peak_kib"] = inst.peak_kib()
        rec["memory"].append(mem)
    finally:
        inst.stop()


def run_case(ctx, inst, case, rnd):
    """Measure CASE once; a failure is recorded, not fatal."""
    rec = ctx.results[inst.spec.key]
    if over_budget(ctx):
        rec["errors"].append(f"round {rnd} {case.key}: skipped, "
                             f"time budget {ctx.budget}s used")
        return
    try:
        res = measure(ctx, inst, case)
    except (RuntimeError, nbd.Error, subprocess.TimeoutExpired) as e:
        rec["errors"].append(f"round {rnd} {case.key}: {e}")
        log(ctx, f"{inst.spec.key} {case.key}: FAILED: {e}")
        return
    res["round"] = rnd
    rec["runs"].setdefault(case.key, []).append(res)
    log(ctx, f"{inst.spec.key:18} {case.key:22} {fmt(res['value']):>8} "
             f"{case.metric:6} {res['cpu_us_per_req']:8.1f} us CPU/req")


def run_all(ctx):
    specs = ctx.specs
    for rnd in range(ctx.repeats):
        # Rotate the order each round so that no server always runs
        # first or last.
        k = rnd % len(specs)
        for spec in specs[k:] + specs[:k]:
            for transports in spec.instances():
                if not spec.unavailable:
                    run_instance(ctx, spec, transports, rnd)
        lim = measure_limits(ctx)
        ctx.limit_runs.append(lim)
        log(ctx, "limits: " + ", ".join(f"{k} {fmt(v)}"
                                         for k, v in lim.items()))


# ---------------------------------------------------------------- report

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, kind=None):
    if v is None:
        return "-"
    if kind == "ratio":
        return f"{v:.2f}x"
    if kind == "pct":
        return f"{v * 100:.0f}%"
    if abs(v) >= 100000:
        return f"{v / 1000:.0f}k"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def summarise(ctx):
    """Medians per server and case, plus the median limits."""
    summary = {}
    for spec in ctx.specs:
        rec = ctx.results[spec.key]
        s = {}
        for case in ctx.cases:
            runs = rec["runs"].get(case.key, [])
            s[case.key] = {
                "value": median(r["value"] for r in runs),
                "cpu_us_per_req": median(r["cpu_us_per_req"] for r in runs),
                "repeats": len(runs),
            }
        unix = [m for m in rec["memory"] if "unix" in m["transports"]]
        peak = [m["peak_kib"] for m in rec["memory"]]
        s["rss_after_fill_mib"] = median(m["after_fill_kib"] / KiB
                                         for m in unix
                                         if m.get("after_fill_kib"))
        s["peak_rss_mib"] = max(peak) / KiB if any(peak) else None
        summary[spec.key] = s
    limits = {}
    for key in ("memcpy_mib_s", "unix_mib_s", "tcp_mib_s", "pingpong_us",
                "pingpong_iops"):
        limits[key] = median(r.get(key) for r in ctx.limit_runs)
    return summary, limits


def ratio(a, b):
    return a / b if a is not None and b else None


def build_table(ctx, summary, limits):
    """Rows of strings: header, then one row per case and metric."""
    specs = ctx.specs
    keys = {s.key for s in specs}
    peers = [s for s in specs if s.ref in keys]
    refs = [s for s in specs if not s.ref]
    short = {s.key: s.short for s in specs}
    head = (["case", "metric"] + [s.short for s in specs]
            + [f"{short[p.ref].split('-')[1]}/{p.short}" for p in peers]
            + [f"{r.short}/limit" for r in refs])
    rows = [head]

    def add(label, metric, values, ratio_kind="ratio", limit=None):
        row = [label, metric] + [fmt(values[s.key]) for s in specs]
        row += [fmt(ratio(values[p.ref], values[p.key]), ratio_kind)
                for p in peers]
        row += [fmt(ratio(values[r.key], limit), "pct") for r in refs]
        rows.append(row)

    for case in ctx.cases:
        lim = limits.get(CASE_LIMITS.get(case.key))
        add(case.label, case.metric,
            {s.key: summary[s.key][case.key]["value"] for s in specs},
            limit=lim)
        add("", "CPU us/req",
            {s.key: summary[s.key][case.key]["cpu_us_per_req"]
             for s in specs})
    add("RSS after 1G fill", "MiB",
        {s.key: summary[s.key]["rss_after_fill_mib"] for s in specs})
    add("peak RSS", "MiB", {s.key: summary[s.key]["peak_rss_mib"]
                            for s in specs})
    return rows


def render(rows, markdown=False):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                 for i, c in enumerate(r)]
        lines.append(("| " + " | ".join(cells) + " |") if markdown
                     else "  ".join(cells))
        if n == 0:
            sep = ["-" * w for w in widths]
            lines.append(("| " + " | ".join(sep) + " |") if markdown
                         else "  ".join(sep))
    return "\n".join(lines)


def best_of(summary, keys, case, field="value"):
    """The highest FIELD of CASE among the servers KEYS that ran it."""
    vals = [summary[k][case][field] for k in keys
            if case in summary.get(k, {})
            and summary[k][case][field] is not None]
    return max(vals) if vals else None


def evaluate_targets(summary):
    """The issue's targets, each with the measured ratio and verdict."""
    out = []

    def get(key, case, field="value"):
        try:
            return summary[key][case][field]
        except KeyError:
            return None

    def target(name, measured, goal, lower_is_better=False):
        if measured is None:
            met = None
        else:
            met = measured <= goal if lower_is_better else measured >= goal
        out.append({"target": name, "measured": measured, "goal": goal,
                    "met": met,
                    "goal_text": ("<= " if lower_is_better else ">= ")
                    + f"{goal:g}"})

    for case in ("4k-randread-qd32", "4k-randwrite-qd32"):
        for a, b in (("nbdsrv-memory", "nbdkit-memory"),
                     ("nbdsrv-file", "nbdkit-file")):
            target(f"CPU/req {case} {a}/{b}",
                   ratio(get(a, case, "cpu_us_per_req"),
                         get(b, case, "cpu_us_per_req")), 0.5, True)
    for case in ("4k-randread-qd32", "4k-randwrite-qd32"):
        target(f"IOPS {case} nbdsrv-memory/nbdkit-memory",
               ratio(get("nbdsrv-memory", case), get("nbdkit-memory", case)),
               1.25)
        qemu = best_of(summary, ("qemu-nbd-threads", "qemu-nbd-io_uring"),
                       case)
        target(f"IOPS {case} nbdsrv-file/best qemu-nbd",
               ratio(get("nbdsrv-file", case), qemu), 2.0)
    target("IOPS 4k-randread-qd1 nbdsrv-memory/nbdkit-memory",
           ratio(get("nbdsrv-memory", "4k-randread-qd1"),
                 get("nbdkit-memory", "4k-randread-qd1")), 1.3)
    for case in ("1m-read-qd8", "1m-write-qd8"):
        target(f"MiB/s {case} nbdsrv-memory/nbdkit-memory",
               ratio(get("nbdsrv-memory", case), get("nbdkit-memory", case)),
               1.3)
    qemu = best_of(summary, ("qemu-nbd-threads", "qemu-nbd-io_uring"),
                   "connect")
    target("conn/s nbdsrv-memory/best qemu-nbd",
           ratio(get("nbdsrv-memory", "connect"), qemu), 1.0)
    target("conn/s nbdsrv-file/best qemu-nbd",
           ratio(get("nbdsrv-file", "connect"), qemu), 1.0)
    # Issue 11: the write path as lean as the read path, and QD1
    # latency at least as good as the best peer's (IOPS at QD1 is the
    # inverse of the mean latency).
    target("CPU/req 4k-randwrite-qd32 nbdsrv-memory/nbdkit-memory (round 2)",
           ratio(get("nbdsrv-memory", "4k-randwrite-qd32", "cpu_us_per_req"),
                 get("nbdkit-memory", "4k-randwrite-qd32",
                     "cpu_us_per_req")), 0.35, True)
    target("IOPS 4k-randwrite-qd32 nbdsrv-memory/nbdkit-memory (round 2)",
           ratio(get("nbdsrv-memory", "4k-randwrite-qd32"),
                 get("nbdkit-memory", "4k-randwrite-qd32")), 2.0)
    others = ("qemu-nbd-threads", "qemu-nbd-io_uring", "nbd-server")
    target("MiB/s 1m-write-qd8 nbdsrv-memory/nbdkit-memory (round 2)",
           ratio(get("nbdsrv-memory", "1m-write-qd8"),
                 get("nbdkit-memory", "1m-write-qd8")), 1.5)
    target("MiB/s 1m-write-qd8 nbdsrv-memory/best other peer",
           ratio(get("nbdsrv-memory", "1m-write-qd8"),
                 best_of(summary, others, "1m-write-qd8")), 1.5)
    target("QD1 4k-randread nbdsrv-memory/best peer (1/latency)",
           ratio(get("nbdsrv-memory", "4k-randread-qd1"),
                 best_of(summary, ("nbdkit-memory",) + others,
                         "4k-randread-qd1")), 1.0)
    # Issue 11 item 3: large reads from a file, on tmpfs and on a disk
    # (page-cached), at least 1.5x nbdkit-file and qemu-nbd io_uring.
    for suffix in ("", "-disk"):
        case = "1m-read-qd8"
        for peer in ("nbdkit-file", "qemu-nbd-io_uring"):
            target(f"MiB/s {case} nbdsrv-file{suffix}/{peer}{suffix} "
                   "(round 2)",
                   ratio(get(f"nbdsrv-file{suffix}", case),
                         get(f"{peer}{suffix}", case)), 1.5)
    # The filter stack: three pass-through filters cost at most 10% more
    # server CPU per 4k request than none, and every stack keeps the
    # bare plugin's ratio to nbdkit (stack ratio / bare ratio >= 1).
    for case in ("4k-randread-qd32", "4k-randwrite-qd32"):
        target(f"CPU/req {case} nbdsrv-3pass/nbdsrv-memory",
               ratio(get("nbdsrv-3pass", case, "cpu_us_per_req"),
                     get("nbdsrv-memory", case, "cpu_us_per_req")),
               1.10, True)
    for name in STACKS:
        for case in STACK_CASES:
            bare = ratio(get("nbdsrv-memory", case),
                         get("nbdkit-memory", case))
            stack = ratio(get(f"nbdsrv-{name}", case),
                          get(f"nbdkit-{name}", case))
            target(f"vs nbdkit {case} {name} stack / bare",
                   ratio(stack, bare), 1.0)
    # TLS (issue 9): with the same certificates, server CPU per request
    # at most 0.7x nbdkit's and throughput at least 1.2x.
    for case in TLS_CASES:
        target(f"CPU/req {case} nbdsrv-tls/nbdkit-tls",
               ratio(get("nbdsrv-tls", case, "cpu_us_per_req"),
                     get("nbdkit-tls", case, "cpu_us_per_req")), 0.7, True)
        target(f"{'IOPS' if '4k' in case else 'MiB/s'} {case} "
               "nbdsrv-tls/nbdkit-tls",
               ratio(get("nbdsrv-tls", case), get("nbdkit-tls", case)), 1.2)
    # --metrics: server CPU per 4k request within 5% of it off.
    for case in ("4k-randread-qd32", "4k-randwrite-qd32"):
        target(f"CPU/req {case} nbdsrv-metrics/nbdsrv-memory",
               ratio(get("nbdsrv-metrics", case, "cpu_us_per_req"),
                     get("nbdsrv-memory", case, "cpu_us_per_req")),
               1.05, True)
    peak = summary.get("nbdsrv-memory", {}).get("peak_rss_mib")
    # "within 10% of bytes written + a few MiB": 1.10 x 1024 + 16 MiB.
    allowed = 1.10 * DISK_SIZE / MiB + 16
    target("peak RSS nbdsrv-memory / (1.1 x 1 GiB written + 16 MiB)",
           ratio(peak, allowed), 1.0, True)
    return out


def render_targets(targets):
    lines = []
    for t in targets:
        verdict = {True: "met", False: "NOT met", None: "not measured"}
        lines.append(f"  {t['target']:62} {fmt(t['measured'], 'ratio'):>7}"
                     f"  goal {t['goal_text']:6}  {verdict[t['met']]}")
    return "\n".join(lines)


def machine_info(ctx):
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"date": time.strftime("%a %b %d %H:%M:%S %Z %Y"),
            "nproc": os.cpu_count(), "cpu": model,
            "kernel": os.uname().release, "loadavg": load}


def versions(ctx):
    first = lambda argv: (run_text(argv).splitlines() or [""])[0]
    return {
        "nbdsrv": first([ctx.nbdsrv, "-V"]),
        "repo_head": first(["git", "-C", REPO, "describe", "--always",
                             "--dirty"]),
        "nbdkit": first(["nbdkit", "--version"]),
        "qemu-nbd": first(["qemu-nbd", "--version"]),
        "nbd-server": first(["nbd-server", "-V"]),
        "fio": first(["fio", "--version"]),
        "nbdcopy": first(["nbdcopy", "--version"]),
        "libnbd": nbd.NBD().get_version(),
    }


# ---------------------------------------------------------------- rbd

def run_rbd(ctx, want):
    """The rbd section (bench/rbd_bench.py), or None when not wanted.
    It needs a Ceph cluster, so it has its own table and targets."""
    if want == "no":
        return None
    import rbd_bench
    why = rbd_bench.unavailable()
    if why:
        log(ctx, "rbd: unavailable: " + why)
        return {"unavailable": why}
    try:
        return rbd_bench.run(ctx)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        log(ctx, f"rbd: FAILED: {e}")
        return {"unavailable": f"failed: {e}"}


def print_rbd(rbd):
    print()
    if "unavailable" in rbd:
        print("rbd: unavailable: " + rbd["unavailable"])
        return
    print(render(rbd["table"]))
    for err in rbd["errors"]:
        print("rbd: " + err)
    print("\nrbd targets (ratios of medians):")
    print(render_targets(rbd["targets"]))


# ---------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Benchmark nbdsrv against nbdkit, qemu-nbd and "
                    "nbd-server (see bench/README.md).")
    p.add_argument("--quick", action="store_true",
                   help="one round of short runs (about 2 minutes)")
    p.add_argument("--json", metavar="FILE",
                   help="write every measurement and the table as JSON")
    p.add_argument("--nbdsrv", metavar="PATH",
                   default=os.path.join(REPO, "build", "nbdsrv"),
                   help="nbdsrv binary or its build directory "
                        "(default: build/nbdsrv of this repository)")
    p.add_argument("--repeats", type=int, help="rounds (median is taken)")
    p.add_argument("--runtime", type=float,
                   help="seconds per fio run and connect loop")
    p.add_argument("--servers", metavar="KEY,...",
                   help="only these servers (nbdsrv-memory, nbdkit-memory, "
                        "nbdsrv-file, nbdkit-file, qemu-nbd-threads, "
                        "qemu-nbd-io_uring, nbd-server, on the disk "
                        "image nbdsrv-file-disk, nbdkit-file-disk, "
                        "qemu-nbd-threads-disk, qemu-nbd-io_uring-disk, "
                        "and the filter "
                        "stacks nbdsrv-3pass, nbdkit-3pass, "
                        "nbdsrv-cow-cache, nbdkit-cow-cache, over "
                        "TLS nbdsrv-tls, nbdkit-tls, and with --metrics "
                        "nbdsrv-metrics)")
    p.add_argument("--cases", metavar="KEY,...",
                   help="only these cases (" +
                        ", ".join(c.key for c in CASES) + ")")
    p.add_argument("--rbd", choices=("yes", "no", "only"), default="yes",
                   help="the rbd section: nbdsrv's rbd plugin against "
                        "qemu-nbd on a throw-away Ceph cluster "
                        "(bench/rbd_bench.py); default yes")
    args = p.parse_args(argv)
    if args.repeats is not None and not 1 <= args.repeats <= 10:
        p.error("--repeats must be between 1 and 10")
    if args.runtime is not None and not 0.2 <= args.runtime <= 60:
        p.error("--runtime must be between 0.2 and 60 seconds")
    return args


def setup(args):
    ctx = Context()
    ctx.t0 = time.monotonic()
    mode = MODES["quick" if args.quick else "full"]
    ctx.mode = "quick" if args.quick else "full"
    ctx.repeats = args.repeats or mode["repeats"]
    ctx.runtime = args.runtime or mode["runtime"]
    ctx.connect = args.runtime or mode["connect"]
    ctx.limit = mode["limit"]
    ctx.budget = mode["budget"]
    if args.repeats or args.runtime:
        ctx.budget = 3600       # explicit settings: the caller's choice
    nbdsrv = os.path.abspath(args.nbdsrv)
    if os.path.isdir(nbdsrv):
        nbdsrv = os.path.join(nbdsrv, "nbdsrv")
    if not os.access(nbdsrv, os.X_OK):
        sys.exit(f"bench.py: {nbdsrv} is not an executable nbdsrv: run "
                 "`make` or pass --nbdsrv BUILD_DIR")
    ctx.nbdsrv = nbdsrv
    own = os.path.join(os.path.dirname(nbdsrv), "plugins",
                       "nbdkit-file-plugin.so")
    ctx.nbdsrv_file_plugin = own if os.path.exists(own) else \
        os.path.join(DEBIAN_PLUGINDIR, "nbdkit-file-plugin.so")
    for tool in ("fio", "nbdcopy"):
        if shutil.which(tool) is None:
            sys.exit(f"bench.py: {tool} is not installed: "
                     "run `make test-deps`")
    if shutil.disk_usage(SHM_DIR).free < DISK_SIZE + 256 * MiB:
        sys.exit(f"bench.py: {SHM_DIR} needs 1.25 GiB free for the image")
    ctx.cases = CASES
    if args.cases:
        want = args.cases.split(",")
        ctx.cases = [c for c in CASES if c.key in want]
        if len(ctx.cases) != len(want):
            sys.exit("bench.py: unknown case in --cases: use "
                     + ", ".join(c.key for c in CASES))
    ctx.specs = make_specs(ctx)
    if args.servers:
        want = args.servers.split(",")
        if not set(want) <= {s.key for s in ctx.specs}:
            sys.exit("bench.py: unknown server in --servers: use "
                     + ", ".join(s.key for s in ctx.specs))
        ctx.specs = [s for s in ctx.specs if s.key in want]
    for spec in ctx.specs:
        spec.unavailable = check_available(spec)
        if spec.key.endswith("-disk") and not spec.unavailable and \
                shutil.disk_usage(DISK_DIR).free < DISK_SIZE + 256 * MiB:
            spec.unavailable = f"{DISK_DIR} needs 1.25 GiB free"
    ctx.results = {s.key: {"runs": {}, "memory": [], "errors": []}
                   for s in ctx.specs}
    ctx.limit_runs = []
    return ctx


def main(argv):
    args = parse_args(argv)
    ctx = setup(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    become_subreaper()
    ctx.tmpdir = tempfile.mkdtemp(prefix="nbdsrv-bench-")
    ctx.image = os.path.join(SHM_DIR, f"nbdsrv-bench-{os.getpid()}.img")
    ctx.disk_image = os.path.join(DISK_DIR,
                                  f"nbdsrv-bench-{os.getpid()}.img")
    need_disk = any(s.key.endswith("-disk") and not s.unavailable
                    for s in ctx.specs)
    info = machine_info(ctx)
    try:
        ctx.limits_exe = build_limits(ctx.tmpdir)
        ctx.tls = None
        if any(s.tls and not s.unavailable for s in ctx.specs):
            ctx.tls = TlsClient(ctx.tmpdir)
        log(ctx, f"mode {ctx.mode}: {ctx.repeats} round(s), "
                 f"{ctx.runtime}s per run; nbdsrv {ctx.nbdsrv}; "
                 f"file plugin {ctx.nbdsrv_file_plugin}")
        if args.rbd != "only":
            fill_image(ctx.image)
            if need_disk:
                fill_image(ctx.disk_image)
            for spec in ctx.specs:
                if spec.unavailable:
                    log(ctx, f"{spec.key}: unavailable: {spec.unavailable}")
            run_all(ctx)
        rbd = run_rbd(ctx, args.rbd)
    finally:
        for image in (ctx.image, ctx.disk_image):
            if os.path.exists(image):
                os.unlink(image)
        shutil.rmtree(ctx.tmpdir, ignore_errors=True)
        reap_strays()
    info["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    if args.rbd == "only":
        print_rbd(rbd)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"mode": ctx.mode, "repeats": ctx.repeats,
                           "machine": info, "versions": versions(ctx),
                           "rbd": rbd}, f, indent=1)
        return 0
    summary, limits = summarise(ctx)
    rows = build_table(ctx, summary, limits)
    targets = evaluate_targets(summary)
    print(render(rows))
    print()
    print("limits: memcpy {} MiB/s, Unix stream {} MiB/s, TCP stream {} "
          "MiB/s, Unix 1-byte round trip {} us ({} IOPS at QD1)".format(
              *(fmt(limits[k]) for k in ("memcpy_mib_s", "unix_mib_s",
                                         "tcp_mib_s", "pingpong_us",
                                         "pingpong_iops"))))
    for spec in ctx.specs:
        if spec.unavailable:
            print(f"{spec.key}: unavailable: {spec.unavailable}")
        for err in ctx.results[spec.key]["errors"]:
            print(f"{spec.key}: {err}")
    print("\ntargets (ratios of medians):")
    print(render_targets(targets))
    if rbd is not None:
        print_rbd(rbd)
    elapsed = time.monotonic() - ctx.t0
    print(f"\n{ctx.mode} mode, {ctx.repeats} round(s), {elapsed:.0f}s; "
          f"load average {' '.join(info['loadavg'])} at start, "
          f"{' '.join(info['loadavg_end'])} at end")
    if args.json:
        doc = {
            "mode": ctx.mode, "repeats": ctx.repeats,
            "runtime_s": ctx.runtime, "elapsed_s": elapsed,
            "machine": info, "versions": versions(ctx),
            "nbdsrv": ctx.nbdsrv,
            "nbdsrv_file_plugin": ctx.nbdsrv_file_plugin,
            "servers": {s.key: {"backing": s.backing,
                                "compared_with": s.ref,
                                "unavailable": s.unavailable,
                                **ctx.results[s.key]}
                        for s in ctx.specs},
            "limits": {"median": limits, "runs": ctx.limit_runs},
            "summary": summary,
            "table": rows,
            "table_markdown": render(rows, markdown=True),
            "targets": targets,
            "rbd": rbd,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
