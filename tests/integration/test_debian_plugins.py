"""Binary compatibility, proven with Debian's own plugins.

Each plugin .so shipped by Debian's nbdkit 1.32 is loaded BY PATH into
nbdsrv and into Debian's nbdkit with the same parameters (inputs are
made twice, identically, in tmp_path, so writes by one server cannot
be seen by the other).  A libnbd client then compares what the two
servers serve: size, flags, the data (all of it, or the first 4 MiB
and some seeded random ranges), block status (merged, so that only the
meaning and not the chunking is compared), and the results of a write,
an unaligned write, flush, zero and trim followed by a read-back where
the export is writable.

A plugin built for API version 1 (tests/plugins/v1.c, no
NBDKIT_API_VERSION) is compiled here against Debian's headers and put
through the same comparison, plus checks of what its callbacks did.

The table of results (plugin, loads, passes) is written to
$BUILD/debian-plugins.txt and printed at the end of the module.
"""
import os
import random
import re
import stat
import subprocess
import time

import nbd
import pytest

from conftest import BINARIES, BUILD, start_server

DEBIAN_PLUGINDIR = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
V1_SOURCE = os.path.join(ROOT, "tests", "plugins", "v1.c")
TABLE_FILE = os.path.join(BUILD, "debian-plugins.txt")

MiB = 1 << 20
WHOLE_LIMIT = 8 * MiB   # read whole disks up to this size
SAMPLES = 16            # random ranges read beyond the first 4 MiB
SAMPLE_SIZE = 65536
MAX_BS_CALLS = 10000    # bound on block status requests per disk

pytestmark = pytest.mark.skipif(
    not os.path.isdir(DEBIAN_PLUGINDIR) or not os.path.exists(
        BINARIES["nbdkit"]),
    reason="Debian's nbdkit is not installed")

RESULTS = {}            # plugin -> {"loads": str, "passes": str, ...}


def debian_plugin(name):
    return os.path.join(DEBIAN_PLUGINDIR, "nbdkit-%s-plugin.so" % name)


def pseudo_random(n, seed):
    return random.Random(seed).randbytes(n)


def disk_with_hole(path, size, seed):
    """Random data with a 1 MiB hole after the first MiB."""
    with open(path, "wb") as f:
        f.write(pseudo_random(MiB, seed))
        f.truncate(size)
        if size > 2 * MiB:
            f.seek(2 * MiB)
            f.write(pseudo_random(size - 2 * MiB, seed + 1))
    return path


SH_SCRIPT = """#!/bin/sh
# nbdkit sh plugin: a disk backed by one file.
f=%(file)s
case "$1" in
  get_size) stat -c %%s "$f" ;;
  pread) dd if="$f" skip="$4" count="$3" iflag=skip_bytes,count_bytes \\
            status=none ;;
  pwrite) dd of="$f" seek="$4" conv=notrunc oflag=seek_bytes status=none ;;
  can_write|can_flush) exit 0 ;;
  flush) exit 0 ;;
  *) exit 2 ;;
esac
"""


def setup_sh(d):
    backing = disk_with_hole(os.path.join(d, "backing"), MiB, 7)
    script = os.path.join(d, "disk.sh")
    with open(script, "w") as f:
        f.write(SH_SCRIPT % {"file": backing})
    os.chmod(script, stat.S_IRWXU)
    return [script]


def setup_eval(d):
    f = disk_with_hole(os.path.join(d, "backing"), MiB, 8)
    return ["get_size=stat -c %%s %s" % f,
            "pread=dd if=%s skip=$4 count=$3 iflag=skip_bytes,count_bytes "
            "status=none" % f,
            "pwrite=dd of=%s seek=$4 conv=notrunc oflag=seek_bytes "
            "status=none" % f,
            "can_write=exit 0", "can_flush=exit 0", "flush=exit 0"]


def setup_floppy(d):
    # One tree for both servers: FAT records each file's creation time
    # from its ctime, which no call can set, so two trees made a moment
    # apart could differ by a second (the export is read-only anyway).
    top = os.path.join(os.path.dirname(d), "floppy")
    if os.path.isdir(top):
        return ["dir=" + top]
    os.makedirs(os.path.join(top, "sub"))
    files = {"hello.txt": b"hello, world\n",
             "data.bin": pseudo_random(100000, 9),
             os.path.join("sub", "inner.txt"): b"inside\n"}
    for name, data in files.items():
        with open(os.path.join(top, name), "wb") as f:
            f.write(data)
    # FAT stores times, including the last access date: fix them, with
    # atime after mtime so that reading does not move atime (relatime).
    old = time.mktime((2020, 1, 2, 3, 4, 6, 0, 0, -1))
    now = time.time()
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (now, old))
    os.utime(top, (now, old))
    return ["dir=" + top]


# plugin -> (function making the parameters in a directory, export name)
CASES = {
    "memory": (lambda d: ["size=4M"], ""),
    "file": (lambda d: ["file=" + disk_with_hole(
        os.path.join(d, "disk.img"), 4 * MiB, 1)], ""),
    "data": (lambda d: ["data=1 2 3 @4096 ( 0x55 0xaa )*512 "
                        "@1048575 0xff"], ""),
    "pattern": (lambda d: ["size=4M"], ""),
    "null": (lambda d: ["size=4M"], ""),
    "zero": (lambda d: [], ""),
    "full": (lambda d: ["size=4M"], ""),
    "sparse-random": (lambda d: ["size=16M", "seed=42"], ""),
    "random": (lambda d: ["size=4M", "seed=1"], ""),
    # Debian's split plugin (1.32.5) crashes both servers (SIGSEGV) on
    # a block status request that crosses a file boundary and ends
    # inside a later file, e.g. [0, 2M) here; block_status() below
    # always asks for the rest of the disk, which does not trigger it.
    "split": (lambda d: [
        "file=" + disk_with_hole(os.path.join(d, "a"), 3 * MiB, 2),
        "file=" + disk_with_hole(os.path.join(d, "b"), 2 * MiB, 4)], ""),
    "sh": (setup_sh, ""),
    "eval": (setup_eval, ""),
    "partitioning": (lambda d: [
        "file=" + disk_with_hole(os.path.join(d, "p1"), 3 * MiB, 5),
        "file=" + disk_with_hole(os.path.join(d, "p2"), MiB, 6),
        "partition-type=mbr"], ""),
    "info": (lambda d: ["mode=exportname"], "hello-from-the-client"),
    "floppy": (setup_floppy, ""),
}

# Server bugs found by these tests are fixed; a new one gets an entry
# here, which turns the affected test into a strict xfail under nbdsrv
# until it is fixed.
KNOWN_DATA_BUGS = {}
KNOWN_DUMP_BUGS = {}


def known_nbdsrv_bug(request, reason):
    request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


# Plugins whose writes can be read back (the others discard writes,
# refuse them, or are read-only).
STORES_WRITES = {"memory", "file", "data", "split", "sh",
                 "eval"}

FLAGS = ["is_read_only", "can_flush", "can_fua", "can_trim", "can_zero",
         "can_fast_zero", "can_multi_conn", "can_cache", "is_rotational",
         "can_df"]


def outcome(fn, *args):
    """Result of a libnbd call as a comparable value."""
    try:
        r = fn(*args)
        if isinstance(r, (bytes, bytearray)):
            return ("ok", bytes(r))
        return ("ok", r if isinstance(r, int) else None)
    except nbd.Error as exc:
        return ("error", exc.errnum)


def block_status(h, size):
    """The whole disk's base:allocation map, neighbours of one type
    merged.  Each request asks for the rest of the disk from where the
    previous answer stopped."""
    extents = []
    offset = 0
    for _ in range(MAX_BS_CALLS):
        if offset >= size:
            break
        got = []
        h.block_status(min(size - offset, 2 ** 31), offset,
                       lambda ctx, off, ents, err: got.extend(ents))
        step = 0
        for i in range(0, len(got), 2):
            length, flags = got[i], got[i + 1]
            length = min(length, size - offset - step)
            if extents and extents[-1][2] == flags:
                extents[-1][1] += length
            else:
                extents.append([offset + step, length, flags])
            step += length
            if offset + step >= size:
                break
        assert step > 0, "block status made no progress at %d" % offset
        offset += step
    else:
        pytest.fail("block status did not cover the disk in %d calls"
                    % MAX_BS_CALLS)
    return [tuple(e) for e in extents]


def read_data(h, size):
    if size <= WHOLE_LIMIT:
        return [h.pread(min(size - o, 2 * MiB), o)
                for o in range(0, size, 2 * MiB)]
    out = [h.pread(2 * MiB, 0), h.pread(2 * MiB, 2 * MiB)]
    rnd = random.Random(size)
    for _ in range(SAMPLES):
        o = rnd.randrange(0, size - SAMPLE_SIZE)
        out.append((o, h.pread(SAMPLE_SIZE, o)))
    return out


def write_checks(h, size):
    """Writes and read-backs in the first 32 KiB (or what exists)."""
    r = {}
    if size < 32768:
        return r
    r["pwrite"] = outcome(h.pwrite, pseudo_random(4096, 11), 8192)
    r["pwrite_unaligned"] = outcome(h.pwrite, pseudo_random(1000, 12),
                                    12345)
    if h.can_fua():
        r["pwrite_fua"] = outcome(h.pwrite, pseudo_random(512, 13), 20480,
                                  nbd.CMD_FLAG_FUA)
    if h.can_flush():
        r["flush"] = outcome(h.flush)
    if h.can_zero():
        r["zero"] = outcome(h.zero, 4096, 0)
    if h.can_trim():
        r["trim"] = outcome(h.trim, 4096, 24576)
    r["readback"] = outcome(h.pread, 32768, 0)
    return r


def observe(s, export):
    """Everything a client can compare about one server's export."""
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri(s.uri_for(export))
    try:
        size = h.get_size()
        obs = {"size": size}
        obs["flags"] = {f: getattr(h, f)() for f in FLAGS}
        obs["data"] = read_data(h, size)
        if h.can_meta_context("base:allocation"):
            obs["block_status"] = block_status(h, size)
        else:
            obs["block_status"] = None
        if not h.is_read_only():
            obs["writes"] = write_checks(h, size)
    finally:
        h.shutdown()
    return obs


def start_both(tmp_path, plugin_path, setup):
    """Start nbdsrv and nbdkit on PLUGIN_PATH, each with its own inputs.
    Returns ({impl: Server or None}, {impl: error text})."""
    servers, errors = {}, {}
    for impl in ("nbdsrv", "nbdkit"):
        d = tmp_path / impl
        d.mkdir()
        args = [plugin_path] + setup(str(d))
        try:
            servers[impl] = start_server(impl, args, str(d / "sock"))
        except RuntimeError as exc:
            servers[impl] = None
            errors[impl] = str(exc)
    return servers, errors


def differences(a, b):
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def compare(tmp_path, name, plugin_path, setup, export=""):
    """Run the comparison for one plugin and record a table row."""
    row = RESULTS.setdefault(name, {"loads": "no", "passes": "no",
                                    "note": ""})
    servers, errors = start_both(tmp_path, plugin_path, setup)
    try:
        if servers["nbdkit"] is None:
            row["note"] = "nbdkit itself fails: " + errors["nbdkit"][-200:]
            pytest.skip(row["note"])
        if servers["nbdsrv"] is None:
            last = errors["nbdsrv"].strip().splitlines()[-1]
            row["note"] = re.sub(r"^.*exited with \d+: ", "", last)[:90]
            pytest.fail("nbdsrv cannot load %s: %s"
                        % (plugin_path, errors["nbdsrv"]))
        row["loads"] = "yes"
        ours = observe(servers["nbdsrv"], export)
        theirs = observe(servers["nbdkit"], export)
        diff = differences(ours, theirs)
        row["size"] = ours["size"]
        if diff:
            row["note"] = "differs: " + ", ".join(diff)
        else:
            row["passes"] = "yes"
    finally:
        for s in servers.values():
            if s is not None:
                s.stop()
    return ours, theirs, diff


def assert_same(ours, theirs, diff):
    assert not diff, "nbdsrv and nbdkit differ in %s:\n%s" % (
        diff, "\n".join("  %s: nbdsrv %.300r\n  %s: nbdkit %.300r"
                        % (k, ours.get(k), k, theirs.get(k))
                        for k in diff))


@pytest.mark.parametrize("name", list(CASES))
def test_debian_plugin(request, tmp_path, name, table):
    path = debian_plugin(name)
    if not os.path.exists(path):
        RESULTS[name] = {"loads": "-", "passes": "-",
                         "note": "not installed"}
        pytest.skip("%s is not installed" % path)
    if name in KNOWN_DATA_BUGS:
        known_nbdsrv_bug(request, KNOWN_DATA_BUGS[name])
    setup, export = CASES[name]
    ours, theirs, diff = compare(tmp_path, name, path, setup, export)
    assert_same(ours, theirs, diff)
    if name in STORES_WRITES:
        readback = ours["writes"]["readback"]
        assert readback[0] == "ok"
        assert readback[1][8192:12288] == pseudo_random(4096, 11)
        assert readback[1][12345:13345] == pseudo_random(1000, 12)


def dump_plugin(impl, args):
    proc = subprocess.run([BINARIES[impl], "--dump-plugin"] + args,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=60)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@pytest.mark.parametrize("name", list(CASES))
def test_dump_plugin_same(request, tmp_path, name, table):
    """--dump-plugin with the same parameters prints the same lines."""
    path = debian_plugin(name)
    if not os.path.exists(path):
        pytest.skip("%s is not installed" % path)
    if name in KNOWN_DUMP_BUGS:
        known_nbdsrv_bug(request, KNOWN_DUMP_BUGS[name])
    setup, _ = CASES[name]
    out = {}
    for impl in ("nbdkit", "nbdsrv"):
        d = tmp_path / impl
        d.mkdir()
        rc, text, err = dump_plugin(impl, [path] + setup(str(d)))
        assert rc == 0, "%s --dump-plugin failed: %s" % (impl, err)
        out[impl] = text
    srv, kit = out["nbdsrv"], out["nbdkit"]
    row = RESULTS.setdefault(name, {"loads": "-", "passes": "-",
                                    "note": ""})
    row["dump"] = "same" if srv == kit else "differs"
    assert srv.splitlines() == kit.splitlines()


def build_v1_plugin(tmp_path):
    """tests/plugins/v1.c compiled against Debian's headers."""
    if not os.path.exists("/usr/include/nbdkit-plugin.h"):
        pytest.skip("Debian's nbdkit-plugin-dev is not installed")
    so = str(tmp_path / "nbdkit-v1deb-plugin.so")
    proc = subprocess.run(
        ["cc", "-std=gnu11", "-Wall", "-Werror", "-shared", "-fPIC",
         "-I/usr/include", "-o", so, V1_SOURCE],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 0, proc.stdout.decode()
    return so


def test_api_v1_plugin_dump(tmp_path):
    so = build_v1_plugin(tmp_path)
    for impl in ("nbdsrv", "nbdkit"):
        rc, out, err = dump_plugin(impl, [so])
        assert rc == 0, err
        assert "api_version=1\n" in out, (impl, out)
        assert "name=v1\n" in out and "version=1.0\n" in out, (impl, out)


def test_api_v1_plugin_dump_same(request, tmp_path):
    so = build_v1_plugin(tmp_path)
    outs = [dump_plugin(impl, [so])[1] for impl in ("nbdsrv", "nbdkit")]
    assert outs[0].splitlines() == outs[1].splitlines()


@pytest.fixture
def v1_results(tmp_path, table):
    so = build_v1_plugin(tmp_path)
    return compare(tmp_path, "v1 (Debian headers)", so, lambda d: [])


def test_api_v1_plugin(v1_results):
    """A version 1 plugin built with Debian's headers serves, and its
    v1 callbacks really were called, through the v1 slots."""
    ours, theirs, diff = v1_results
    w = ours["writes"]
    assert ours["size"] == MiB and not ours["flags"]["is_read_only"]
    expected = bytearray(32768)
    expected[8192:12288] = pseudo_random(4096, 11)
    expected[12345:13345] = pseudo_random(1000, 12)
    expected[20480:20992] = pseudo_random(512, 13)
    expected[0:4096] = bytes(4096)          # zero
    expected[24576:28672] = bytes(4096)     # trim
    # The first 16 bytes report the flush count: one flush, plus one
    # for the FUA write (a v1 plugin cannot do FUA: it is emulated).
    expected[0:14] = b"flushes=00002\0"
    assert w["pwrite_fua"] == ("ok", None)
    assert w["readback"] == ("ok", bytes(expected))
    assert theirs["writes"]["readback"] == w["readback"]


def test_api_v1_plugin_same_as_nbdkit(request, v1_results):
    ours, theirs, diff = v1_results
    assert_same(ours, theirs, diff)


def test_magic_config_key_repeated(request, tmp_path, table):
    """nbdkit passes every bare parameter to .magic_config_key
    (split's is file=), not only the first one."""
    row = RESULTS.setdefault("split (bare file names)", {
        "loads": "no", "passes": "no", "note": "bare names not accepted"})
    a = disk_with_hole(str(tmp_path / "a"), 3 * MiB, 2)
    b = disk_with_hole(str(tmp_path / "b"), 2 * MiB, 4)
    sizes = {}
    for impl in ("nbdkit", "nbdsrv"):
        proc = subprocess.run(
            [BINARIES[impl], "-U", "-", debian_plugin("split"), a, b,
             "--run", 'nbdinfo --size "$uri"'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        sizes[impl] = (proc.returncode, proc.stdout.decode().strip())
    assert sizes["nbdkit"] == (0, str(5 * MiB))
    assert sizes["nbdsrv"] == sizes["nbdkit"], sizes
    row.update(loads="yes", passes="yes", note="")


def test_bare_first_parameter_is_script(request, impl):
    """The thread-model probe has no magic key and refuses every key,
    naming it: so the error shows which key .config received."""
    probe = os.path.join(BUILD, "tests", "plugins",
                         "nbdkit-tm-parallel-plugin.so")
    proc = subprocess.run([BINARIES[impl], "-U", "-", probe, "foo",
                           "--run", "true"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode != 0
    assert "unknown parameter 'script'" in proc.stderr.decode()


@pytest.fixture(scope="module")
def table(request):
    """Write and print the table once the module's tests are done."""
    yield RESULTS
    fmt = "%-24s %-6s %-7s %-8s %s"
    lines = [fmt % ("plugin", "loads", "passes", "dump", "note")]
    for name, row in RESULTS.items():
        lines.append(fmt % (name, row["loads"], row["passes"],
                            row.get("dump", "-"), row["note"]))
    text = "\n".join(lines) + "\n"
    try:
        with open(TABLE_FILE, "w") as f:
            f.write(text)
    except OSError:
        pass
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line("Debian nbdkit plugins under nbdsrv "
                                "(also in %s):" % TABLE_FILE)
            for line in lines:
                reporter.write_line(line)
