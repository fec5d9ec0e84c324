"""Filters, group A: nozero, noextents, nocache, noparallel, fua,
offset, truncate (and more as they land).

Every test runs one command line twice: under Debian's nbdkit with
Debian's own filter (the reference), and under a candidate, then
compares what a real client saw.  The candidates are nbdsrv with our
filter, and Debian's nbdkit with our filter's .so (marked nbdkit_plugin,
so a sanitized build leaves that half out).

Most tests stack the filter over a logging plugin: a Debian sh-plugin
script backed by a file, which appends each data call it receives
(method, count, offset, flags) to a log.  The log shows exactly what
the filter passed down (a zero turned into writes, a flag dropped, a
request shifted or split), and comparing logs compares the filter's
behaviour, not only its results.  Each server gets its own disk and
log, so one cannot see the other's writes.
"""
import itertools
import os
import random
import subprocess

import pytest

from conftest import BINARIES, filter_path, server_env
from util import (SH_PLUGIN, block_status, connect, errno_of, export_flags,
                  write_script)

nbd = pytest.importorskip("nbd")

KiB = 1024
MiB = 1 << 20
DISK_SIZE = MiB

DEBIAN_FILTERDIR = "/usr/lib/x86_64-linux-gnu/nbdkit/filters"

# Hang protection for a server that should refuse to start.
START_TIMEOUT = 60

CANDIDATES = [
    "nbdsrv",
    pytest.param("ours-nbdkit", marks=pytest.mark.nbdkit_plugin),
]

# The logging plugin.  Capabilities come from the environment so that
# one script covers every case: CAN_FLUSH, CAN_ZERO, CAN_FAST_ZERO,
# CAN_TRIM, CAN_MULTI_CONN (yes/no), CAN_FUA, CAN_CACHE (none/emulate/native),
# BLOCK_SIZE ("min pref max", or unset).  Extents: the first half of
# the disk is data, the second half a hole that is not known to read as
# zeroes (type 1: the disk holds random data there, and a hole with the
# zero bit would let the server answer reads of it with zeroes).
LOG_PLUGIN = r"""#!/bin/bash
yes () { [ "${1:-yes}" = yes ] && exit 0 || exit 3; }
zeroes () {
  dd if=/dev/zero of="$DISK" seek="$2" count="$1" iflag=count_bytes \
     oflag=seek_bytes conv=notrunc status=none
}
case "$1" in
  get_size) stat -c %s "$DISK" ;;
  can_write|can_extents) exit 0 ;;
  can_multi_conn) yes "$CAN_MULTI_CONN" ;;
  can_flush) yes "$CAN_FLUSH" ;;
  can_zero) yes "$CAN_ZERO" ;;
  can_fast_zero) yes "$CAN_FAST_ZERO" ;;
  can_trim) yes "$CAN_TRIM" ;;
  can_fua) echo "${CAN_FUA:-native}" ;;
  can_cache) echo "${CAN_CACHE:-native}" ;;
  block_size)
    [ -n "$BLOCK_SIZE" ] || exit 2
    echo "$BLOCK_SIZE" ;;
  pread)
    echo "pread $3 $4" >> "$LOG"
    dd if="$DISK" skip="$4" count="$3" iflag=skip_bytes,count_bytes \
       status=none ;;
  pwrite)
    echo "pwrite $3 $4 $5" >> "$LOG"
    dd of="$DISK" seek="$4" oflag=seek_bytes conv=notrunc status=none ;;
  zero|trim)
    echo "$1 $3 $4 $5" >> "$LOG"
    zeroes "$3" "$4" ;;
  flush) echo "flush $3" >> "$LOG" ;;
  cache) echo "cache $3 $4" >> "$LOG" ;;
  extents)
    echo "extents $3 $4 $5" >> "$LOG"
    half=$(( $(stat -c %s "$DISK") / 2 ))
    echo "0 $half 0"
    echo "$half $half 1" ;;
  *) exit 2 ;;
esac
"""


def disk_bytes(seed=1, size=DISK_SIZE):
    return random.Random(seed).randbytes(size)


class Rig:
    """Starts the servers of one test, each with its own disk and log."""

    def __init__(self, server, tmp_path):
        self.server = server
        self.tmp = tmp_path
        self.script = write_script(tmp_path, "log.sh", LOG_PLUGIN)
        self.count = itertools.count()

    def filter_args(self, which, filters):
        if which == "ours-nbdkit":
            return ["--filter=" + filter_path(f) for f in filters]
        return ["--filter=" + f for f in filters]

    def impl(self, which):
        return "nbdsrv" if which == "nbdsrv" else "nbdkit"

    def command(self, which, filters, args, env=None, size=DISK_SIZE,
                opts=()):
        """The server arguments and environment for WHICH ('debian',
        'ours-nbdkit' or 'nbdsrv') with FILTERS over the logging plugin
        and the parameters ARGS; and the disk and log paths."""
        n = next(self.count)
        disk = self.tmp / ("disk%d" % n)
        disk.write_bytes(disk_bytes(size=size))
        log = self.tmp / ("log%d" % n)
        log.write_text("")
        full_env = dict(os.environ, DISK=str(disk), LOG=str(log))
        full_env.update(env or {})
        argv = (list(opts) + self.filter_args(which, filters)
                + [SH_PLUGIN, self.script] + list(args))
        return argv, full_env, disk, log

    def start(self, which, filters, args, env=None, size=DISK_SIZE,
              opts=()):
        """Start a server over the logging plugin (with server options
        OPTS); returns the server with .disk and .log (Paths) set."""
        argv, full_env, disk, log = self.command(which, filters, args, env,
                                                 size, opts)
        srv = self.server(*argv, impl=self.impl(which), env=full_env)
        srv.disk, srv.log = disk, log
        return srv

    def start_plain(self, which, filters, args):
        """Start a server with FILTERS over a plugin named in ARGS."""
        return self.server(*(self.filter_args(which, filters) + list(args)),
                           impl=self.impl(which))

    def compare(self, which, filters, args, observe, env=None,
                size=DISK_SIZE, opts=()):
        """OBSERVE(server) under Debian's filter and under WHICH; assert
        they agree and return the reference observation."""
        want = observe(self.start("debian", filters, args, env, size, opts))
        got = observe(self.start(which, filters, args, env, size, opts))
        assert got == want, first_difference(want, got)
        return want

    def compare_plain(self, which, filters, args, observe):
        want = observe(self.start_plain("debian", filters, args))
        got = observe(self.start_plain(which, filters, args))
        assert got == want, first_difference(want, got)
        return want

    def refuse(self, which, filters, args, env=None):
        """Start WHICH expecting it to refuse the command line; returns
        (exit status, stderr lines)."""
        argv, full_env, _, _ = self.command(which, filters, args, env)
        impl = self.impl(which)
        sock = str(self.tmp / ("refused%d" % next(self.count)))
        proc = subprocess.run([BINARIES[impl], "-f", "-U", sock] + argv,
                              stdin=subprocess.DEVNULL,
                              capture_output=True, text=True,
                              env=server_env(impl, full_env),
                              timeout=START_TIMEOUT)
        assert not os.path.exists(sock), "%s left a socket" % which
        return proc.returncode, proc.stderr.splitlines()

    def compare_refused(self, which, filters, args, env=None):
        """Both refuse ARGS with exit status 1 and one line on stderr;
        returns our line."""
        status, lines = self.refuse("debian", filters, args, env)
        assert status == 1 and lines, "nbdkit accepted %s" % (args,)
        status, lines = self.refuse(which, filters, args, env)
        assert status == 1
        assert len(lines) == 1, lines
        return lines[0]


def first_difference(want, got, path="observation"):
    """Where nbdkit's observation WANT and ours GOT first differ."""
    if (isinstance(want, (list, tuple)) and isinstance(got, (list, tuple))
            and not isinstance(want, (bytes, bytearray))):
        for i, (w, g) in enumerate(zip(want, got)):
            if w != g:
                return first_difference(w, g, "%s[%d]" % (path, i))
        return "%s: nbdkit has %d items, we have %d" % (path, len(want),
                                                        len(got))
    if isinstance(want, dict) and isinstance(got, dict):
        for k in want:
            if want[k] != got.get(k):
                return first_difference(want[k], got.get(k),
                                        "%s[%r]" % (path, k))
    return "%s: nbdkit %r, we %r" % (path, want, got)


@pytest.fixture
def rig(server, tmp_path):
    return Rig(server, tmp_path)


@pytest.fixture(params=CANDIDATES)
def which(request):
    return request.param


def log_lines(srv):
    """The data calls the plugin saw, in order."""
    return srv.log.read_text().splitlines()


def reset_log(srv):
    srv.log.write_text("")


def flags_of(srv):
    h = connect(srv)
    try:
        return export_flags(h)
    finally:
        h.shutdown()


def connect_error(srv):
    """None if a client can connect to SRV, else 'refused'."""
    h = nbd.NBD()
    try:
        h.connect_uri(srv.uri)
    except nbd.Error:
        return "refused"
    h.shutdown()
    return None


def run_ops(srv, ops, strict=True):
    """Run OPS (a list of (name, args...)) on one connection; return,
    for each, its result (data read, errno or 0) and the plugin calls
    it caused.  With STRICT false, libnbd sends unaligned requests
    instead of refusing them itself."""
    h = connect(srv)
    if not strict:
        h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)
    results = []
    try:
        for op in ops:
            reset_log(srv)
            name, args = op[0], op[1:]
            if name == "pread":
                out = []
                err = errno_of(lambda: out.append(h.pread(*args)))
                res = out[0] if out else err
            elif name == "block_status":
                out = []
                err = errno_of(lambda: out.append(block_status(h, *args)))
                res = out[0] if out else err
            else:
                res = errno_of(lambda: getattr(h, name)(*args))
            calls = log_lines(srv)
            if name == "pread":
                # nbdsrv may ask for block status before a large read,
                # to send holes as holes: not the filter's doing.
                calls = [c for c in calls if not c.startswith("extents")]
            results.append((op, res, calls))
    finally:
        h.shutdown()
    return results


def ops_observer(ops):
    return lambda srv: run_ops(srv, ops)


# ---------------------------------------------------------------- nozero

ZEROMODES = ["none", "emulate", "notrim", "plugin"]
FASTZEROMODES = ["default", "none", "slow", "ignore"]


@pytest.mark.parametrize("zeromode", ZEROMODES)
@pytest.mark.parametrize("fastzeromode", FASTZEROMODES)
def test_nozero_modes(rig, which, zeromode, fastzeromode):
    """Flags, and what a zero (plain, may-trim, fua, fast) turns into
    below, for every pair of modes."""
    ops = [("zero", 4096, 8192, nbd.CMD_FLAG_NO_HOLE),
           ("zero", 4096, 8192),
           ("zero", 4096, 8192, nbd.CMD_FLAG_FUA),
           ("zero", 4096, 8192, nbd.CMD_FLAG_FAST_ZERO),
           ("pread", 16, 8190)]

    def observe(srv):
        flags = flags_of(srv)
        return flags, run_ops(srv, ops if flags["can_zero"] else ops[-1:])

    flags, results = rig.compare(which, ["nozero"],
                                 ["zeromode=" + zeromode,
                                  "fastzeromode=" + fastzeromode],
                                 observe)
    assert flags["can_zero"] == (zeromode != "none")
    if zeromode == "emulate":
        assert results[1][2] == ["pwrite 4096 8192 "]
        # ENOTSUP, or EINVAL where fast zero is not offered at all.
        # The server never calls an emulated zero fast, so even
        # fastzeromode=ignore fails them (nbdkit does the same).
        assert results[3][1] == (22 if fastzeromode == "none" else 95)
    if zeromode == "notrim":
        assert results[1][2] == ["zero 4096 8192 "]
    assert results[-1][1] == disk_bytes()[8190:8192] + bytes(14) \
        or zeromode == "none"


def test_nozero_large_emulated_zero(rig, which):
    """An emulated zero larger than the filter's write buffer is
    written in pieces that cover it exactly."""
    def observe(srv):
        h = connect(srv)
        h.zero(3 * MiB // 2, 0)
        calls = log_lines(srv)
        data = h.pread(3 * MiB // 2 + 512, 0)
        h.shutdown()
        return calls, data

    # Compared on content and coverage only: the piece size is ours.
    for impl in ("debian", which):
        srv = rig.start(impl, ["nozero"], ["zeromode=emulate"],
                        size=2 * MiB)
        calls, data = observe(srv)
        assert data == bytes(3 * MiB // 2) + disk_bytes(
            size=2 * MiB)[3 * MiB // 2:3 * MiB // 2 + 512]
        covered = 0
        for c in calls:
            name, count, offset = c.split()[:3]
            assert name == "pwrite" and int(offset) == covered
            covered += int(count)
        assert covered == 3 * MiB // 2


@pytest.mark.parametrize("zeromode", ["notrim", "plugin"])
def test_nozero_read_only(rig, which, zeromode):
    """A read-only export is never offered zero: notrim and plugin
    connect anyway."""
    def observe(srv):
        return connect_error(srv), flags_of(srv)["can_zero"]

    assert rig.compare(which, ["nozero"], ["zeromode=" + zeromode],
                       observe, opts=["-r"]) == (None, False)


@pytest.mark.parametrize("zeromode", ["notrim", "plugin"])
def test_nozero_needs_zero_below(rig, which, zeromode):
    """notrim and plugin over a layer that cannot zero (Debian's nozero
    with its default zeromode=none) fail the connection, and the server
    goes on.  No reference: nbdkit's nozero loaded twice shares one
    zeromode, so this stack has no nbdkit-only equivalent."""
    argv = rig.filter_args(which, ["nozero"]) + [
        "--filter=" + os.path.join(DEBIAN_FILTERDIR,
                                   "nbdkit-nozero-filter.so")]
    srv = rig.server(*(argv + ["memory", "1M", "zeromode=" + zeromode]),
                     impl=rig.impl(which))
    assert connect_error(srv) == "refused"
    assert srv.alive()
    assert "nozero" in srv.stderr_text()


@pytest.mark.parametrize("zeromode", ["notrim", "plugin"])
def test_nozero_plugin_without_zero(rig, which, zeromode):
    """A writable plugin without zero still has zero emulated by the
    server: notrim and plugin pass zeroes down as writes."""
    ops = [("zero", 4096, 0), ("pread", 8, 4092)]
    results = rig.compare(which, ["nozero"], ["zeromode=" + zeromode],
                          ops_observer(ops), env={"CAN_ZERO": "no"})
    assert results[0][1] == 0 and results[0][2][0].startswith("pwrite")
    assert results[1][1] == bytes(4) + disk_bytes()[4096:4100]


@pytest.mark.parametrize("param", ["zeromode=foo", "fastzeromode=bar"])
def test_nozero_bad_mode(rig, which, param):
    line = rig.compare_refused(which, ["nozero"], [param])
    assert "nozero" in line and param.split("=")[1] in line


# ------------------------------------------------------------- noextents

def test_noextents(rig, which):
    """Block status is not offered; the client sees all data and the
    plugin is never asked."""
    def observe(srv):
        h = connect(srv)
        can = h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.shutdown()
        mapped = subprocess.run(["nbdinfo", "--map", "--json", srv.uri],
                                capture_output=True, text=True,
                                timeout=60).stdout
        return can, mapped, log_lines(srv)

    can, mapped, calls = rig.compare(which, ["noextents"], [], observe)
    # base:allocation is still negotiated, answered as all data.
    assert can is True
    assert '"type": 0' in mapped and '"type": 3' not in mapped
    assert calls == []


def test_noextents_qemu_img_map(rig, which):
    def observe(srv):
        return subprocess.run(["qemu-img", "map", "--output=json",
                               "-f", "raw", srv.uri],
                              capture_output=True, text=True,
                              timeout=60).stdout

    out = rig.compare(which, ["noextents"], [], observe)
    assert '"data": true' in out and '"data": false' not in out


# --------------------------------------------------------------- nocache

@pytest.mark.parametrize("cachemode", [None, "none", "emulate", "nop"])
@pytest.mark.parametrize("plugin_cache", ["native", "none"])
def test_nocache_modes(rig, which, cachemode, plugin_cache):
    args = [] if cachemode is None else ["cachemode=" + cachemode]

    def observe(srv):
        flags = flags_of(srv)
        ops = [("cache", 8192, 4096)] if flags["can_cache"] else []
        return flags["can_cache"], run_ops(srv, ops)

    can, results = rig.compare(which, ["nocache"], args, observe,
                               env={"CAN_CACHE": plugin_cache})
    assert can == (cachemode in ("emulate", "nop"))
    if cachemode == "emulate":
        # The server reads instead of asking the plugin to cache.
        assert results[0][2] and all(c.startswith("pread")
                                     for c in results[0][2])
    if cachemode == "nop":
        assert results[0][1] == 0 and results[0][2] == []


def test_nocache_bad_mode(rig, which):
    line = rig.compare_refused(which, ["nocache"], ["cachemode=always"])
    assert "nocache" in line and "always" in line


# ------------------------------------------------------------ noparallel

def dump_plugin(which, filters, args):
    """--dump-plugin's thread_model line for WHICH."""
    impl = "nbdsrv" if which == "nbdsrv" else "nbdkit"
    fargs = (["--filter=" + filter_path(f) for f in filters]
             if which == "ours-nbdkit" else ["--filter=" + f for f in filters])
    out = subprocess.run([BINARIES[impl]] + fargs + ["memory", "1M"]
                         + list(args) + ["--dump-plugin"],
                         capture_output=True, text=True,
                         env=server_env(impl), timeout=START_TIMEOUT)
    assert out.returncode == 0, out.stderr
    return [l for l in out.stdout.splitlines()
            if l.startswith("thread_model=")]


@pytest.mark.parametrize("args,model", [
    ([], "serialize_requests"),
    (["serialize=requests"], "serialize_requests"),
    (["serialize=all-requests"], "serialize_all_requests"),
    (["serialise=all_requests"], "serialize_all_requests"),
    (["serialize=connections"], "serialize_connections"),
])
def test_noparallel_thread_model(which, args, model):
    want = dump_plugin("debian", ["noparallel"], args)
    assert want == ["thread_model=" + model]
    assert dump_plugin(which, ["noparallel"], args) == want


@pytest.mark.parametrize("mode", ["requests", "connections"])
def test_noparallel_multi_conn(rig, which, mode):
    """serialize=connections stops advertising multi-conn."""
    flags = rig.compare_plain(which, ["noparallel"],
                              ["memory", "1M", "serialize=" + mode],
                              flags_of)
    assert flags["can_multi_conn"] == (mode != "connections")


def test_noparallel_bad_mode(rig, which):
    line = rig.compare_refused(which, ["noparallel"], ["serialize=none"])
    assert "noparallel" in line and "none" in line


# ------------------------------------------------------------------ fua

FUA_OPS = [("pwrite", b"x" * 512, 0, nbd.CMD_FLAG_FUA),
           ("pwrite", b"y" * 512, 512),
           ("zero", 512, 1024, nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE),
           ("trim", 512, 2048, nbd.CMD_FLAG_FUA),
           ("flush",),
           ("pread", 4, 510)]


def fua_observe(srv):
    flags = flags_of(srv)
    ops = [op if flags["can_fua"] or len(op) < 4
           else op[:3] + (op[3] & ~nbd.CMD_FLAG_FUA,) for op in FUA_OPS]
    if not flags["can_flush"]:
        ops = [op for op in ops if op[0] != "flush"]
    return flags["can_fua"], flags["can_flush"], run_ops(srv, ops)


@pytest.mark.parametrize("fuamode",
                         [None, "emulate", "native", "force", "pass",
                          "discard"])
@pytest.mark.parametrize("plugin_fua", ["native", "emulate"])
def test_fua_modes(rig, which, fuamode, plugin_fua):
    args = [] if fuamode is None else ["fuamode=" + fuamode]
    can_fua, can_flush, results = rig.compare(
        which, ["fua"], args, fua_observe, env={"CAN_FUA": plugin_fua})
    assert can_fua == (fuamode is not None)
    assert can_flush
    calls = [c for r in results for c in r[2]]
    if fuamode == "discard":
        assert "flush " not in calls and not any("fua" in c for c in calls)
    if fuamode == "force":
        assert results[1][2] == (["pwrite 512 512 fua"]
                                 if plugin_fua == "native"
                                 else ["pwrite 512 512 ", "flush "])


def test_fua_none_is_the_default(rig, which):
    """fuamode=none names the default.  nbdkit 1.32 refuses it although
    its manual documents it (a bug); we accept it and behave as with no
    fuamode."""
    status, lines = rig.refuse("debian", ["fua"], ["fuamode=none"])
    assert status == 1 and "unknown fuamode 'none'" in lines[-1]
    want = fua_observe(rig.start("debian", ["fua"], []))
    assert fua_observe(rig.start(which, ["fua"], ["fuamode=none"])) == want


@pytest.mark.parametrize("fuamode,env", [
    ("emulate", {"CAN_FLUSH": "no"}),
    ("native", {"CAN_FUA": "none", "CAN_FLUSH": "no"}),
    ("force", {"CAN_FUA": "none", "CAN_FLUSH": "no"}),
])
def test_fua_needs_plugin_support(rig, which, fuamode, env):
    def observe(srv):
        return connect_error(srv), srv.alive()

    assert rig.compare(which, ["fua"], ["fuamode=" + fuamode], observe,
                       env=env) == ("refused", True)


@pytest.mark.parametrize("fuamode", ["force", "discard", "pass"])
def test_fua_without_plugin_flush(rig, which, fuamode):
    """force and discard offer flush even where the plugin has none."""
    can_fua, can_flush, _ = rig.compare(
        which, ["fua"], ["fuamode=" + fuamode], fua_observe,
        env={"CAN_FLUSH": "no", "CAN_FUA": "native"})
    assert can_flush == (fuamode != "pass")


def test_fua_bad_mode(rig, which):
    line = rig.compare_refused(which, ["fua"], ["fuamode=sometimes"])
    assert "fua" in line and "sometimes" in line


# --------------------------------------------------------------- offset

@pytest.mark.parametrize("args", [
    ["offset=4096"],
    ["offset=4096", "range=65536"],
    ["range=100000"],
    ["offset=1M"],
    ["offset=512k", "range=512k"],
])
def test_offset_window(rig, which, args):
    """Size, reads, writes, zero, trim, cache and block status, all
    shifted into the window."""
    def observe(srv):
        h = connect(srv)
        size = h.get_size()
        h.shutdown()
        if size == 0:
            return size, []
        ops = [("pread", min(size, 1000), 0),
               ("pread", min(size, 1000), size - min(size, 1000)),
               ("pwrite", b"w" * min(size, 700), 0),
               ("zero", min(size, 300), 0),
               ("trim", min(size, 200), size - min(size, 200)),
               ("cache", min(size, 4096), 0),
               ("block_status", size, 0),
               ("pread", min(size, 1000), 0),
               ("pread", 1, size)]
        return size, run_ops(srv, ops)

    size, results = rig.compare(which, ["offset"], args, observe)
    start = int(nbd_size(args, "offset"))
    assert size == int(nbd_size(args, "range", DISK_SIZE - start))
    if size:
        assert results[0][1] == disk_bytes()[start:start + min(size, 1000)]
        assert results[-1][1] == 22     # EINVAL: past the end


def nbd_size(args, key, default=0):
    """The value of KEY= in ARGS, with k and M suffixes."""
    for a in args:
        if a.startswith(key + "="):
            v = a.split("=", 1)[1]
            mult = {"k": KiB, "M": MiB}.get(v[-1], 1)
            return int(v.rstrip("kM")) * mult
    return default


@pytest.mark.parametrize("args", [["offset=2M"],
                                  ["offset=512k", "range=1M"],
                                  ["range=2M"]])
def test_offset_past_the_end(rig, which, args):
    """A window past the end fails the connection, not the server."""
    def observe(srv):
        return connect_error(srv), srv.alive()

    assert rig.compare(which, ["offset"], args, observe) == ("refused", True)


@pytest.mark.parametrize("param", ["offset=-1", "range=-1", "offset=x"])
def test_offset_bad_parameter(rig, which, param):
    rig.compare_refused(which, ["offset"], [param])


def test_offset_qemu_img(rig, which, tmp_path):
    """qemu-img convert copies exactly the window."""
    def observe(srv):
        out = tmp_path / ("copy%d" % next(rig.count))
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw",
                        srv.uri, str(out)], check=True, timeout=120)
        return out.read_bytes()

    data = rig.compare(which, ["offset"], ["offset=4k", "range=64k"],
                       observe)
    assert data == disk_bytes()[4096:4096 + 65536]


# ------------------------------------------------------------- truncate

@pytest.mark.parametrize("args", [
    ["truncate=1000"],
    ["truncate=1100000"],
    ["truncate=1000", "round-up=512"],
    ["round-up=4M"],
    ["round-down=64k", "truncate=1000000"],
    ["truncate=1048576"],
])
def test_truncate_sizes(rig, which, args):
    """Size, and reads, writes, zero, trim, cache and block status
    across the end of the plugin."""
    def observe(srv):
        h = connect(srv)
        size = h.get_size()
        h.shutdown()
        tail = min(size, 4096)
        ops = [("pread", tail, size - tail),
               ("pwrite", b"a" * tail, size - tail),
               ("pwrite", bytes(tail), size - tail),
               ("zero", tail, size - tail),
               ("trim", tail, size - tail),
               ("cache", tail, size - tail),
               ("block_status", tail, size - tail),
               ("pread", tail, size - tail)]
        return size, run_ops(srv, ops)

    size, results = rig.compare(which, ["truncate"], args, observe)
    assert size > 0
    if size > DISK_SIZE:
        assert results[1][1] != 0       # non-zero data past the end
        assert results[2][1] == 0       # zeroes are fine
        assert results[0][1][-1:] == b"\0"


def test_truncate_qemu_io(rig, which):
    """qemu-io across the old end: data before it, only zeroes after."""
    def observe(srv):
        out = subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "write -P 0x55 1020k 4k",
             "-c", "read -P 0x55 1020k 4k", "-c", "write -P 0x55 1040k 8k",
             "-c", "write -z 1048k 8k", "-c", "read -P 0 1048k 8k",
             srv.uri], capture_output=True, text=True, timeout=60)
        # Drop the timing lines.
        return out.returncode, [l for l in out.stdout.splitlines()
                                if "ops/sec" not in l]

    rc, lines = rig.compare(which, ["truncate"], ["round-up=2M"], observe)
    assert rc == 1
    assert lines == ["wrote 4096/4096 bytes at offset 1044480",
                     "read 4096/4096 bytes at offset 1044480",
                     "write failed: No space left on device",
                     "wrote 8192/8192 bytes at offset 1073152",
                     "read 8192/8192 bytes at offset 1073152"]


@pytest.mark.parametrize("param", ["round-up=3", "round-up=0",
                                   "round-down=3", "truncate=-1",
                                   "round-down=0"])
def test_truncate_bad_parameter(rig, which, param):
    rig.compare_refused(which, ["truncate"], [param])


def block_sizes(srv):
    h = connect(srv)
    try:
        return [h.get_block_size(k) for k in (nbd.SIZE_MINIMUM,
                                              nbd.SIZE_PREFERRED,
                                              nbd.SIZE_MAXIMUM)]
    finally:
        h.shutdown()


# ------------------------------------------------------------------ swab

@pytest.mark.parametrize("bits", [None, "8", "16", "32", "64"])
def test_swab(rig, which, bits):
    """Size rounded to a word, block size, swapped reads and writes,
    unaligned requests refused."""
    word = int(bits or 16) // 8
    args = [] if bits is None else ["swab-bits=" + bits]

    def observe(srv):
        sizes = block_sizes(srv)
        h = connect(srv)
        size = h.get_size()
        h.shutdown()
        ops = [("pread", 64, 0),
               ("pwrite", bytes(range(64)), 64),
               ("pread", 64, 64),
               ("zero", 64, 128),
               ("trim", 64, 192),
               ("block_status", 512, 0),
               ("pread", 8, size - 8)]
        if word > 1:
            ops += [("pread", word + 1, 0), ("pread", word, 1),
                    ("pwrite", b"z", 1)]
        return sizes, size, run_ops(srv, ops), srv.disk.read_bytes()[64:128]

    if word == 1:
        check_swab_bits_8(rig, which, observe)
        return
    sizes, size, results, written = rig.compare(which, ["swab"], args,
                                                observe, size=1001)
    assert size == 1001 - 1001 % word
    assert sizes[0] == word
    original = disk_bytes(size=1001)[:64]
    want = b"".join(original[i:i + word][::-1] for i in range(0, 64, word))
    assert results[0][1] == want
    assert results[2][1] == bytes(range(64))
    if word > 1:
        assert written != bytes(range(64))
        assert [r[1] for r in results[-3:]] == [22, 22, 22]


def check_swab_bits_8(rig, which, observe):
    """swab-bits=8 swaps nothing.  nbdkit 1.32 writes whatever its
    buffer held (zeroes, or stale heap bytes) instead of the client's
    data there (a bug); we write the data."""
    want = observe(rig.start("debian", ["swab"], ["swab-bits=8"],
                             size=1001))
    got = observe(rig.start(which, ["swab"], ["swab-bits=8"], size=1001))
    assert want[2][2][1] != bytes(range(64))            # nbdkit's bug
    assert got[2][2][1] == got[3] == bytes(range(64))   # ours
    assert got[2][0] == want[2][0]                      # reads agree
    want[2][2], got[2][2] = None, None
    assert got[:3] == want[:3]


def test_swab_bad_bits(rig, which):
    line = rig.compare_refused(which, ["swab"], ["swab-bits=12"])
    assert "swab" in line and "12" in line


def test_swab_pattern_little_endian(rig, which):
    """swab-bits=64 turns the pattern plugin's big-endian offsets into
    little-endian ones."""
    def observe(srv):
        h = connect(srv)
        data = h.pread(64, 4096)
        h.shutdown()
        return data

    data = rig.compare_plain(which, ["swab"],
                             ["pattern", "1M", "swab-bits=64"], observe)
    assert data[:8] == (4096).to_bytes(8, "little")


# ------------------------------------------------------------ checkwrite

def test_checkwrite_flags(rig, which):
    flags = rig.compare(which, ["checkwrite"], [], flags_of,
                        env={"CAN_FLUSH": "no", "CAN_TRIM": "no",
                             "CAN_ZERO": "no", "CAN_FUA": "none"})
    assert flags["can_flush"] and flags["can_trim"] and flags["can_zero"]
    assert not flags["is_read_only"]


def test_checkwrite_writes(rig, which):
    """Writes of the same bytes succeed and reach nothing; different
    bytes, or zeroes over data, fail with EIO."""
    data = disk_bytes()
    ops = [("pwrite", data[4096:8192], 4096),
           ("pwrite", b"x" * 512, 4096),
           ("pwrite", data[:100] + b"!", 0),
           ("zero", 512, 0),
           ("trim", 512, 0),
           ("flush",),
           ("pwrite", data[:512], 0, nbd.CMD_FLAG_FUA)]

    def observe(srv):
        res = run_ops(srv, ops)
        return ([(r[1], [c for c in r[2] if not c.startswith("pread")])
                 for r in res], srv.disk.read_bytes() == data)

    results, unchanged = rig.compare(which, ["checkwrite"], [], observe)
    assert [r[0] for r in results] == [0, 5, 5, 5, 5, 0, 0]
    assert all(c.startswith("extents") for r in results for c in r[1])
    assert unchanged


def test_checkwrite_zero_over_zeroes(rig, which):
    """Zero and trim over zeroes succeed."""
    def observe(srv):
        h = connect(srv)
        res = [errno_of(lambda: h.zero(65536, 0)),
               errno_of(lambda: h.trim(4096, 8192)),
               errno_of(lambda: h.pwrite(bytes(4096), 65536)),
               errno_of(lambda: h.pwrite(b"\1" * 4096, 65536))]
        h.shutdown()
        return res

    res = rig.compare_plain(which, ["checkwrite"], ["memory", "1M"],
                            observe)
    assert res == [0, 0, 0, 5]


def test_checkwrite_nbdcopy(rig, which):
    """A correct copy onto itself succeeds."""
    def observe(srv):
        return subprocess.run(["nbdcopy", srv.uri, srv.uri],
                              capture_output=True, timeout=120).returncode

    assert rig.compare_plain(which, ["checkwrite"],
                             ["data", "@32768 1 @65536 2 3", "size=1M"],
                             observe) == 0


def test_checkwrite_nbdcopy_wrong_source(rig, which):
    """Copying a different disk onto it fails."""
    def observe(srv):
        return subprocess.run(["nbdcopy", "--", "[", "nbdkit", "pattern",
                               "1M", "]", srv.uri],
                              capture_output=True, timeout=120).returncode

    assert rig.compare_plain(which, ["checkwrite"],
                             ["data", "@32768 1", "size=1M"],
                             observe) != 0


# --------------------------------------------------------------- protect

@pytest.mark.parametrize("ranges", [
    ["protect=0-511"],
    ["protect=~4096-8191"],
    ["protect=0x100-0x1ff", "protect=1000-1999"],
    ["protect=1000-"],
    ["protect=-99"],
    ["protect=0-99", "protect=50-200", "protect=201-300"],
    ["protect=010-020"],
])
def test_protect(rig, which, ranges):
    """Writes, zeroes and trims that change protected bytes fail with
    EPERM and reach nothing; those that leave them unchanged pass."""
    data = disk_bytes()
    offsets = [0, 90, 250, 500, 1000, 4000, 4096, 8100, 8192, 100000]
    ops = []
    for off in offsets:
        ops += [("pwrite", data[off:off + 200], off),
                ("pwrite", b"q" * 200, off)]

    def observe(srv):
        res = run_ops(srv, ops)
        return ([(r[1], [c for c in r[2] if not c.startswith("pread")])
                 for r in res], srv.disk.read_bytes())

    results, disk = rig.compare(which, ["protect"], ranges, observe)
    assert any(r[0] == 1 for r in results)      # EPERM
    assert any(r[0] == 0 and r[1] for r in results)


@pytest.mark.parametrize("offset,count", [(300, 64), (480, 64), (600, 64),
                                          (0, 64)])
def test_protect_zero_trim(rig, which, offset, count):
    """Zero and trim that change protected bytes fail with EPERM."""
    def observe(srv):
        h = connect(srv)
        res = [errno_of(lambda: h.zero(count, offset)),
               errno_of(lambda: h.trim(count, offset)),
               h.pread(16, offset)]
        h.shutdown()
        return res

    results = rig.compare_plain(which, ["protect"],
                                ["data", "@256 (0x55)*256", "size=1M",
                                 "protect=256-511"], observe)
    assert results[0] == results[1] == (1 if 256 <= offset < 512 else 0)


@pytest.mark.parametrize("op", ["zero", "trim"])
def test_protect_zero_before_range(rig, which, op):
    """A zero or trim that starts before a protected range of non-zero
    bytes and runs into it kills nbdkit 1.32 (SIGSEGV, a bug); we fail
    it with EPERM and go on."""
    args = ["data", "@256 (0x55)*256", "size=1M", "protect=256-511"]
    ref = rig.start_plain("debian", ["protect"], args)
    h = connect(ref)
    assert errno_of(lambda: getattr(h, op)(64, 200)) != 0
    assert ref.proc.wait(timeout=START_TIMEOUT) == -11
    srv = rig.start_plain(which, ["protect"], args)
    h = connect(srv)
    assert errno_of(lambda: getattr(h, op)(64, 200)) == 1
    assert errno_of(lambda: getattr(h, op)(400, 200)) == 1
    assert errno_of(lambda: getattr(h, op)(56, 200)) == 0
    assert h.pread(8, 252) == bytes(4) + b"\x55" * 4
    h.shutdown()
    assert srv.alive()


@pytest.mark.parametrize("param", ["protect=5-1", "protect=abc",
                                   "protect=1-x", "protect=12"])
def test_protect_bad_range(rig, which, param):
    rig.compare_refused(which, ["protect"], [param])


# ------------------------------------------------------ blocksize-policy

@pytest.mark.parametrize("args", [
    [],
    ["blocksize-minimum=4k"],
    ["blocksize-preferred=32k"],
    ["blocksize-maximum=1M"],
    ["blocksize-minimum=512", "blocksize-preferred=64k",
     "blocksize-maximum=8M"],
    ["blocksize-minimum=4k", "blocksize-maximum=64k"],
])
@pytest.mark.parametrize("plugin_sizes", [None, "512 4096 1M"])
def test_blocksize_policy_sizes(rig, which, args, plugin_sizes):
    env = {} if plugin_sizes is None else {"BLOCK_SIZE": plugin_sizes}
    sizes = rig.compare(which, ["blocksize-policy"], args, block_sizes,
                        env=env)
    if args:
        assert sizes[0] >= 1


def test_blocksize_policy_large_minimum(rig, which):
    """blocksize-minimum above 4096 alone: nbdkit 1.32 keeps its default
    preferred size of 4096, below the minimum, and fails every
    connection; we raise the default preferred size to the minimum."""
    def observe(srv):
        return connect_error(srv), srv.alive()

    args = ["blocksize-minimum=64k"]
    assert observe(rig.start("debian", ["blocksize-policy"],
                             args)) == ("refused", True)
    assert block_sizes(rig.start(which, ["blocksize-policy"], args)) == [
        65536, 65536, 0xffffffff]
    # With a preferred size given, both agree.
    rig.compare(which, ["blocksize-policy"],
                args + ["blocksize-preferred=64k"], block_sizes)


@pytest.mark.parametrize("args", [
    ["blocksize-maximum=1000", "blocksize-minimum=512"],
    ["blocksize-minimum=64k", "blocksize-maximum=32k"],
])
def test_blocksize_policy_bad_combination(rig, which, args):
    """Sizes out of order fail each connection, not the server."""
    def observe(srv):
        return connect_error(srv), srv.alive()

    assert rig.compare(which, ["blocksize-policy"], args,
                       observe) == ("refused", True)


@pytest.mark.parametrize("policy", ["allow", "error"])
def test_blocksize_policy_error_policy(rig, which, policy):
    args = ["blocksize-minimum=512", "blocksize-maximum=64k",
            "blocksize-error-policy=" + policy]
    ops = [("pread", 512, 0), ("pread", 100, 0), ("pread", 512, 1),
           ("pread", 128 * KiB, 0), ("pwrite", b"x" * 100, 0),
           ("zero", 128 * KiB, 0), ("trim", 256, 512),
           ("cache", 100, 0), ("block_status", 512, 0),
           ("block_status", 100, 0)]

    def observe(srv):
        return [(r[1] if isinstance(r[1], int) else "data", r[2])
                for r in run_ops(srv, ops, strict=False)]

    if which == "nbdsrv" and policy == "allow":
        # Rule V-16: nbdsrv itself refuses requests not aligned to the
        # minimum block size it advertised (nbdkit's core does not).
        want = observe(rig.start("debian", ["blocksize-policy"], args))
        got = observe(rig.start(which, ["blocksize-policy"], args))
        for i, op in enumerate(ops):
            count = len(op[1]) if op[0] == "pwrite" else op[1]
            if count % 512 or op[2] % 512:
                want[i] = (22, [])
        assert got == want, first_difference(want, got)
        return
    results = rig.compare(which, ["blocksize-policy"], args, observe)
    errors = [r[0] for r in results]
    if policy == "error":
        assert errors[1] == errors[2] == errors[3] == 22
        assert results[1][1] == []
    else:
        assert errors[:4] == ["data"] * 4


@pytest.mark.parametrize("param", [
    "blocksize-minimum=3", "blocksize-minimum=128k",
    "blocksize-preferred=256", "blocksize-preferred=64M",
    "blocksize-maximum=8G", "blocksize-error-policy=foo"])
def test_blocksize_policy_bad_parameter(rig, which, param):
    rig.compare_refused(which, ["blocksize-policy"], [param])


# ------------------------------------------------------------ extentlist

EXTENT_LISTS = {
    "simple": "0 4k\n64k 64k hole\n",
    "words": "8k 4k hole,zero\n0 8k 0\n12k 4k 2\n",
    "beyond": "0 512k\n512k 2M 3\n",
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(EXTENT_LISTS))
def test_extentlist(rig, which, tmp_path, name):
    path = tmp_path / ("extents-" + name)
    path.write_text(EXTENT_LISTS[name])

    def observe(srv):
        h = connect(srv)
        res = [block_status(h, 65536, 0), block_status(h, 4096, 2048),
               block_status(h, 200000, 0, nbd.CMD_FLAG_REQ_ONE),
               block_status(h, DISK_SIZE - 4096, 4096)]
        h.shutdown()
        return res, log_lines(srv)

    res, calls = rig.compare(which, ["extentlist"],
                             ["extentlist=" + str(path)], observe)
    assert calls == []
    assert res[0]


@pytest.mark.parametrize("text", ["0 4k\n2k 4k\n", "0\n", "\n0 4k\n",
                                  "# comment\n", None])
def test_extentlist_bad_list(rig, which, tmp_path, text):
    args = []
    if text is not None:
        path = tmp_path / "bad-extents"
        path.write_text(text)
        args = ["extentlist=" + str(path)]
    rig.compare_refused(which, ["extentlist"], args)


def test_extentlist_unknown_type_word(rig, which, tmp_path):
    """nbdkit 1.32 ignores a type word it does not know ("0 4k foo" is
    data, "hole,foo" a hole), so a typo silently changes the map; we
    refuse the list and name the word."""
    path = tmp_path / "typo"
    path.write_text("0 4k hole,zreo\n")
    ref = rig.start("debian", ["extentlist"], ["extentlist=" + str(path)])
    h = connect(ref)
    assert block_status(h, 4096, 0)[:2] == [4096, 1]
    h.shutdown()
    status, lines = rig.refuse(which, ["extentlist"],
                               ["extentlist=" + str(path)])
    assert status == 1 and len(lines) == 1 and "zreo" in lines[0]


# ---------------------------------------------------------- cacheextents

def test_cacheextents(rig, which):
    """A second block status inside the cached answer does not reach
    the plugin; a write drops the cache."""
    ops = [("block_status", 4096, 0, nbd.CMD_FLAG_REQ_ONE),
           ("block_status", 4096, 8192),
           ("block_status", 4096, 600000),
           ("pwrite", b"x" * 512, 0),
           ("block_status", 4096, 600000),
           ("zero", 512, 0),
           ("block_status", 4096, 0),
           ("trim", 512, 0),
           ("block_status", 4096, 0)]
    results = rig.compare(which, ["cacheextents"], [], ops_observer(ops))
    calls = [r[2] for r in results]
    assert calls[0] == ["extents 4096 0 "]
    assert calls[1] == calls[2] == []
    assert calls[4] == ["extents 4096 600000 "]
    assert calls[6] and calls[8]


def test_cacheextents_qemu_img_map(rig, which):
    def observe(srv):
        out = subprocess.run(["qemu-img", "map", "--output=json",
                              "-f", "raw", srv.uri],
                             capture_output=True, text=True, timeout=60)
        return out.stdout, len(log_lines(srv))

    out, ncalls = rig.compare(which, ["cacheextents"], [], observe)
    assert '"data": true' in out and '"data": false' in out


# ------------------------------------------------------------- partition

PART_SIZES = [65536, 131072, 32768, 65536, 98304, 32768]


@pytest.fixture(scope="module")
def partitioned_disks(tmp_path_factory):
    """Disk images made by Debian's partitioning plugin: "mbr4" (four
    primary partitions), "mbr6" (primary, extended and logical ones)
    and "gpt6"; each partition I holds disk_bytes(seed=I)."""
    tmp = tmp_path_factory.mktemp("partitioned")
    files = []
    for i, size in enumerate(PART_SIZES):
        path = tmp / ("p%d" % (i + 1))
        path.write_bytes(disk_bytes(seed=i + 1, size=size))
        files.append(str(path))
    disks = {}
    for name, ptype, n in [("mbr4", "mbr", 4), ("mbr6", "mbr", 6),
                           ("gpt6", "gpt", 6)]:
        out = tmp / (name + ".img")
        subprocess.run(["nbdkit", "-U", "-", "partitioning"] + files[:n]
                       + ["partition-type=" + ptype, "--run",
                          'nbdcopy "$uri" ' + str(out)],
                       check=True, timeout=120, env=server_env("nbdkit"))
        disks[name] = out
    return disks


def partition_observe(srv):
    h = nbd.NBD()
    try:
        h.connect_uri(srv.uri)
    except nbd.Error:
        return "refused", srv.alive()
    size = h.get_size()
    res = (size, h.pread(512, 0), h.pread(512, size - 512))
    h.shutdown()
    return res


@pytest.mark.parametrize("disk", ["mbr4", "mbr6", "gpt6"])
@pytest.mark.parametrize("number", range(1, 9))
def test_partition(rig, which, partitioned_disks, tmp_path, disk, number):
    """Each partition of each table, and the numbers that do not exist;
    each server serves its own copy of the image."""
    def start(impl):
        copy = tmp_path / ("%s-%s.img" % (impl, disk))
        copy.write_bytes(partitioned_disks[disk].read_bytes())
        return rig.start_plain(impl, ["partition"],
                               ["file", str(copy), "partition=%d" % number])

    want = partition_observe(start("debian"))
    got = partition_observe(start(which))
    assert got == want, first_difference(want, got)
    if want[0] != "refused":
        # Which file is it?  Its first bytes say.
        assert any(want[1] == disk_bytes(seed=i + 1, size=512)
                   for i in range(len(PART_SIZES)))


def test_partition_write_and_map(rig, which, partitioned_disks, tmp_path):
    """Writes land inside the partition; block status is shifted."""
    def observe(srv):
        h = connect(srv)
        h.pwrite(b"W" * 1024, 4096)
        bs = block_status(h, h.get_size(), 0)
        h.shutdown()
        return bs, srv.copy.read_bytes()

    def start(impl):
        copy = tmp_path / ("%s-w.img" % impl)
        copy.write_bytes(partitioned_disks["gpt6"].read_bytes())
        srv = rig.start_plain(impl, ["partition"],
                              ["file", str(copy), "partition=2"])
        srv.copy = copy
        return srv

    want = observe(start("debian"))
    got = observe(start(which))
    assert got == want, first_difference(want, got)
    assert b"W" * 1024 in want[1]


def test_partition_no_table(rig, which):
    """A disk without a partition table fails each connection."""
    def observe(srv):
        return connect_error(srv), srv.alive()

    assert rig.compare(which, ["partition"], ["partition=1"],
                       observe) == ("refused", True)


@pytest.mark.parametrize("param", ["partition=0", "partition=x", None])
def test_partition_bad_parameter(rig, which, param):
    rig.compare_refused(which, ["partition"], [] if param is None
                        else [param])


# ------------------------------------------------------------- blocksize

BLOCKSIZE_OPS = [("pread", 100, 1000), ("pread", 9000, 500),
                 ("pread", 4096, 4096), ("pread", 70000, 3),
                 ("pwrite", b"a" * 100, 1000),
                 ("pwrite", b"b" * 9000, 500),
                 ("pwrite", b"c" * 8192, 8192),
                 ("pwrite", b"d" * 700, 100, nbd.CMD_FLAG_FUA),
                 ("zero", 5000, 300), ("zero", 8192, 16384),
                 ("zero", 100, 50, nbd.CMD_FLAG_FAST_ZERO),
                 ("zero", 8192, 16384, nbd.CMD_FLAG_FAST_ZERO),
                 ("trim", 5000, 300), ("trim", 100, 10),
                 ("trim", 40000, 0),
                 ("cache", 100, 1000), ("cache", 40000, 10),
                 ("block_status", 1000, 100),
                 ("block_status", 600000, 500000),
                 ("pread", 12000, 0)]


BLOCKSIZE_ARGS = [[], ["minblock=512"],
                  ["minblock=4k", "maxdata=8k", "maxlen=16k"],
                  ["maxdata=4k"], ["minblock=64k"], ["maxdata=128M"]]
PLUGIN_SIZES = "512 4096 16384"


# minblock=64k over a plugin whose maximum is 16k is left to
# test_blocksize_minblock_above_plugin_maximum.
@pytest.mark.parametrize("args,plugin_sizes", [
    (args, sizes) for args in BLOCKSIZE_ARGS for sizes in (None,
                                                           PLUGIN_SIZES)
    if not (args == ["minblock=64k"] and sizes)])
def test_blocksize(rig, which, args, plugin_sizes):
    """What reaches the plugin for unaligned and large requests, and
    what the client reads back."""
    env = {} if plugin_sizes is None else {"BLOCK_SIZE": plugin_sizes}

    def observe(srv):
        return (block_sizes(srv), flags_of(srv)["get_size"],
                run_ops(srv, BLOCKSIZE_OPS, strict=False),
                srv.disk.read_bytes())

    sizes, size, results, disk = rig.compare(which, ["blocksize"], args,
                                             observe, env=env,
                                             size=DISK_SIZE + 1000)
    assert sizes[0] == 1
    assert results[-1][1] == disk[:12000]
    assert results[1][1] == disk_bytes(size=DISK_SIZE + 1000)[500:9500]


def test_blocksize_minblock_above_plugin_maximum(rig, which):
    """minblock=64k over a plugin whose maximum block size is 16k: a
    cache request aborts nbdkit 1.32 (an assertion in its backend); we
    serve it in whole 64k blocks, as every other request."""
    env = {"BLOCK_SIZE": PLUGIN_SIZES}
    ref = rig.start("debian", ["blocksize"], ["minblock=64k"], env=env)
    h = connect(ref)
    assert errno_of(lambda: h.cache(100, 1000)) != 0
    assert ref.proc.wait(timeout=START_TIMEOUT) == -6       # SIGABRT
    srv = rig.start(which, ["blocksize"], ["minblock=64k"], env=env)
    results = run_ops(srv, [("cache", 100, 1000), ("pread", 100, 1000)])
    assert results[0][1] == 0 and results[0][2] == ["cache 65536 0"]
    assert results[1][1] == disk_bytes()[1000:1100]
    assert srv.alive()


@pytest.mark.parametrize("param", ["minblock=3", "minblock=128k",
                                   "maxdata=1000", "maxlen=1000"])
def test_blocksize_bad_parameter(rig, which, param):
    rig.compare_refused(which, ["blocksize"], [param, "minblock=512"]
                        if not param.startswith("minblock") else [param])


def test_blocksize_qemu_io(rig, which):
    """qemu-io's unaligned writes and reads through minblock=4k."""
    def observe(srv):
        out = subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "write -P 0x11 1 4095",
             "-c", "read -P 0x11 1 4095", "-c", "write -z 5000 10000",
             "-c", "read -P 0 5000 10000", "-c", "discard 3 9000",
             srv.uri], capture_output=True, text=True, timeout=60)
        return out.returncode, [l for l in out.stdout.splitlines()
                                if "ops/sec" not in l]

    rc, lines = rig.compare_plain(which, ["blocksize"],
                                  ["memory", "1M", "minblock=4k"], observe)
    assert rc == 0 and not any("fail" in l for l in lines)


# ------------------------------------------------------------ multi-conn

MC_STEPS = [("flush", 0), ("pwrite", 0), ("flush", 1), ("flush", 0),
            ("pread", 2), ("flush", 0), ("pwrite", 1), ("flush", 1),
            ("flush", 2), ("fua", 0), ("flush", 2), ("pread", 1),
            ("pwrite", 2), ("flush", 0), ("flush", 1), ("flush", 2)]


def mc_observe(srv, exports=("", "", "")):
    """Flags, then what reaches the plugin for each step of MC_STEPS
    over three connections (to EXPORTS)."""
    hs = []
    for name in exports:
        h = nbd.NBD()
        h.connect_uri(srv.uri_for(name))
        hs.append(h)
    flags = export_flags(hs[0], ["can_multi_conn", "can_flush", "can_fua"])
    steps = []
    for what, i in MC_STEPS:
        reset_log(srv)
        h = hs[i]
        if what == "flush":
            err = errno_of(h.flush)
        elif what == "pread":
            err = errno_of(lambda: h.pread(512, 0))
        else:
            err = errno_of(lambda: h.pwrite(
                b"m" * 512, 0, nbd.CMD_FLAG_FUA if what == "fua" else 0))
        steps.append((what, i, err, log_lines(srv)))
    for h in hs:
        h.shutdown()
    return flags, steps


@pytest.mark.parametrize("mode", [None, "auto", "emulate", "disable",
                                  "plugin", "unsafe"])
@pytest.mark.parametrize("track", [None, "connection", "fast", "off"])
@pytest.mark.parametrize("plugin_mc", ["yes", "no"])
def test_multi_conn(rig, which, mode, track, plugin_mc):
    """Multi-conn advertised, and the flushes reaching the plugin, call
    by call, for each mode and dirty tracking."""
    args = (([] if mode is None else ["multi-conn-mode=" + mode])
            + ([] if track is None else ["multi-conn-track-dirty=" + track]))
    flags, steps = rig.compare(which, ["multi-conn"], args, mc_observe,
                               env={"CAN_MULTI_CONN": plugin_mc})
    emulating = mode == "emulate" or (mode in (None, "auto")
                                      and plugin_mc == "no")
    if mode == "disable":
        assert flags["can_multi_conn"] is False
    elif mode == "plugin":
        assert flags["can_multi_conn"] == (plugin_mc == "yes")
    else:
        assert flags["can_multi_conn"] is True
    if emulating and track == "off":
        assert all(len(s[3]) == 3 for s in steps if s[0] == "flush")


@pytest.mark.parametrize("byname", ["true", "false"])
def test_multi_conn_exportname(rig, which, byname):
    """multi-conn-exportname=true repeats a flush only on connections
    to the same export."""
    args = ["multi-conn-mode=emulate", "multi-conn-track-dirty=off",
            "multi-conn-exportname=" + byname]
    flags, steps = rig.compare(
        which, ["multi-conn"], args,
        lambda srv: mc_observe(srv, exports=("a", "b", "a")))
    counts = [len(s[3]) for s in steps if s[0] == "flush" and s[1] == 1]
    assert counts[0] == (1 if byname == "true" else 3)


def test_multi_conn_emulate_needs_flush(rig, which):
    def observe(srv):
        return connect_error(srv), srv.alive()

    assert rig.compare(which, ["multi-conn"], ["multi-conn-mode=emulate"],
                       observe, env={"CAN_FLUSH": "no"}) == ("refused", True)


def test_multi_conn_serialized_connections(rig, which):
    """auto under a thread model that serializes connections offers no
    multi-conn (the plugin has none)."""
    flags = rig.compare(which, ["multi-conn", "noparallel"],
                        ["serialize=connections"], flags_of,
                        env={"CAN_MULTI_CONN": "no"})
    assert flags["can_multi_conn"] is False


@pytest.mark.parametrize("param", ["multi-conn-mode=sometimes",
                                   "multi-conn-track-dirty=always",
                                   "multi-conn-exportname=maybe"])
def test_multi_conn_bad_parameter(rig, which, param):
    rig.compare_refused(which, ["multi-conn"], [param])
