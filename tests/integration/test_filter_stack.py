"""The filter stack itself (--filter): the order in which each layer's
callbacks run, contexts a filter manages by hand, the thread model of
the stack, refusals of bad filters, errors from a filter reaching the
client, and Debian's own filter binaries running under nbdsrv with the
same client-visible results as under Debian's nbdkit.
"""
import errno
import hashlib
import os
import random
import shutil
import subprocess
import time

import nbd
import pytest

from conftest import BUILD, NBDKIT, NBDSRV, sanitizer_runtimes
from util import accepting, connect, block_status, export_flags, errno_of

TEST_FILTERS = os.path.join(BUILD, "tests", "filters")
DEBIAN_FILTERS = "/usr/lib/x86_64-linux-gnu/nbdkit/filters"

KiB = 1024
MiB = 1024 * KiB


def order_filter(name):
    return os.path.join(TEST_FILTERS, "nbdkit-%s-filter.so" % name)


def debian_filter(name):
    return os.path.join(DEBIAN_FILTERS, "nbdkit-%s-filter.so" % name)


@pytest.fixture
def server(server):
    return accepting(server)


# What nbdkit 1.32 calls on two stacked filters (ordera above orderb
# above the memory plugin) for two connections that each read once:
# loads bottom-up, config and config_complete top-down, get_ready and
# after_fork bottom-up, per connection open top-down (each filter
# passing it on before it returns), prepare bottom-up, the size and
# can_write asked once, finalize and close top-down, cleanup top-down,
# unload bottom-up.  preconnect is checked apart: the readiness probes
# of the test fixtures connect too.
ONE_CONNECTION = [
    "ordera open", "orderb open", "orderb opened", "ordera opened",
    "orderb prepare", "ordera prepare",
    "ordera get_size", "orderb get_size",
    "ordera can_write", "orderb can_write",
    "ordera pread", "orderb pread",
    "ordera finalize", "orderb finalize",
    "ordera close", "orderb close",
]
EXPECTED_ORDER = [
    "orderb load", "ordera load",
    "ordera config size=1M", "orderb config size=1M",
    "ordera config_complete", "orderb config_complete",
    "orderb get_ready", "ordera get_ready",
    "orderb after_fork", "ordera after_fork",
] + ONE_CONNECTION * 2 + [
    "ordera cleanup", "orderb cleanup",
    "orderb unload", "ordera unload",
]
PRECONNECT = ["ordera preconnect", "orderb preconnect"]


def wait_for_line(log, line, count):
    """Wait until LOG holds LINE COUNT times: the server finishes a
    connection after the client has gone."""
    deadline = time.monotonic() + 30
    while log.read_text().splitlines().count(line) < count:
        assert time.monotonic() < deadline, "no %r in %s" % (line, log)
        time.sleep(0.01)


def callback_order(server, tmp_path, impl):
    log = tmp_path / ("order-%s.log" % impl)
    env = dict(os.environ, ORDER_LOG=str(log))
    srv = server("--filter=" + order_filter("ordera"),
                 "--filter=" + order_filter("orderb"),
                 "memory", "size=1M", impl=impl, env=env)
    for i in range(2):
        h = connect(srv)
        assert h.get_size() == MiB
        assert h.pread(512, 0) == bytes(512)
        h.shutdown()
        wait_for_line(log, "orderb close", i + 1)
    assert srv.stop() == 0
    lines = log.read_text().splitlines()
    # Every connection reaches both layers' preconnect, before its open
    # (the probes' connections may interleave theirs).
    assert lines.count("ordera preconnect") == \
        lines.count("orderb preconnect") >= 2
    assert lines.index("orderb preconnect") < lines.index("ordera open")
    return [l for l in lines if l not in PRECONNECT]


def test_callback_order(server, tmp_path):
    """nbdsrv calls each layer's callbacks in nbdkit's order, and asks
    the size and can_write once per connection."""
    assert callback_order(server, tmp_path, "nbdsrv") == EXPECTED_ORDER


@pytest.mark.nbdkit_plugin
def test_callback_order_is_nbdkits(server, tmp_path):
    """The order above is what Debian's nbdkit does with the same
    filter binaries."""
    assert callback_order(server, tmp_path, "nbdkit") == EXPECTED_ORDER


def hand_managed_description(server, impl):
    srv = server("--filter=" + order_filter("ctxprobe"), "pattern", "1M",
                 impl=impl)
    h = nbd.NBD()
    h.set_full_info(True)
    h.connect_uri(srv.uri)
    desc = h.get_export_description()
    # The layer below is reachable through the hand-opened context.
    assert h.pread(8, 8) == (8).to_bytes(8, "big")
    h.shutdown()
    assert srv.stop() == 0
    return desc


def test_hand_managed_contexts(server):
    """A filter opens a shared context outside any connection and reads
    from it on a thread of its own, and opens each connection's context
    below by hand (nbdkit_next_context_open, nbdkit_context_set_next)."""
    assert hand_managed_description(server, "nbdsrv") == (
        "shared size=1048576 first=0x00; own size=1048576")


@pytest.mark.nbdkit_plugin
def test_hand_managed_contexts_as_nbdkit(server):
    assert hand_managed_description(server, "nbdkit") == (
        "shared size=1048576 first=0x00; own size=1048576")


def dump_thread_model(binary, *args):
    out = subprocess.run([binary] + list(args) + ["--dump-plugin"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, timeout=60, check=True).stdout
    return [l for l in out.splitlines() if l.startswith("thread_model=")]


@pytest.mark.parametrize("extra,model", [
    ([], "serialize_requests"),
    (["serialize=connections"], "serialize_connections"),
])
def test_thread_model_is_the_most_restrictive(extra, model):
    """Debian's noparallel filter lowers the stack's thread model below
    the memory plugin's parallel; --dump-plugin shows the stack's."""
    args = ["--filter=" + debian_filter("noparallel"), "memory", "1M"] + extra
    ours = dump_thread_model(NBDSRV, *args)
    assert ours == ["thread_model=" + model]
    if not sanitizer_runtimes():
        assert dump_thread_model(NBDKIT, "--filter=noparallel", "memory",
                                 "1M", *extra) == ours


def refused(tmp_path, *args):
    """Run nbdsrv with ARGS on a socket; it must exit 1 at once with one
    line on stderr and leave nothing listening."""
    sock = str(tmp_path / "refused.sock")
    proc = subprocess.run([NBDSRV, "-f", "-U", sock] + list(args),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert not os.path.exists(sock)
    return lines[0]


def test_unknown_filter(tmp_path):
    line = refused(tmp_path, "--filter=nosuchfilter", "memory", "1M")
    assert "unknown filter 'nosuchfilter'" in line
    assert "nbdkit-nosuchfilter-filter.so" in line


def test_filter_built_for_another_release(tmp_path):
    line = refused(tmp_path, "--filter=" + order_filter("badversion"),
                   "memory", "1M")
    assert "built for nbdkit 1.30.0" in line and "rebuild" in line


def test_not_a_filter(tmp_path):
    """A plugin given as a filter has no filter_init."""
    plugin = os.path.join(BUILD, "plugins", "nbdkit-null-plugin.so")
    line = refused(tmp_path, "--filter=" + plugin, "memory", "1M")
    assert "is not an nbdkit filter" in line


def test_missing_filter_file(tmp_path):
    line = refused(tmp_path, "--filter=" + str(tmp_path / "no.so"),
                   "memory", "1M")
    assert "cannot load filter" in line and "no.so" in line


def test_parameter_no_layer_takes(tmp_path):
    """A parameter passes through every filter to the plugin, which
    refuses it."""
    line = refused(tmp_path, "--filter=" + debian_filter("delay"),
                   "memory", "1M", "nosuchkey=1")
    assert "nosuchkey" in line


def test_filter_parameter_reaches_the_filter(tmp_path):
    """A filter's own parameter is taken by the filter, not passed to the
    plugin: a bad value is the filter's error."""
    line = refused(tmp_path, "--filter=" + debian_filter("delay"),
                   "memory", "1M", "rdelay=notanumber")
    assert "rdelay" in line or "notanumber" in line


def test_filter_error_reaches_the_client(server, impl):
    """Debian's error filter fails every read with ENOSPC: the client
    gets ENOSPC, then writes on the same connection still work, and a
    second client is served too."""
    srv = server("--filter=" + debian_filter("error"), "memory", "1M",
                 "error-pread=ENOSPC", "error-pread-rate=1", impl=impl)
    h = connect(srv)
    assert errno_of(lambda: h.pread(512, 0)) == errno.ENOSPC
    h.pwrite(b"\x01" * 512, 0)
    h.flush()
    h2 = connect(srv)
    assert errno_of(lambda: h2.pread(512, 0)) == errno.ENOSPC
    h2.shutdown()
    h.shutdown()
    assert srv.alive()


# Debian's filter binaries with a simple configuration each, over our
# memory plugin.  What the client sees must be the same as under
# Debian's nbdkit.  exitlast and exitwhen stop the server and are tested
# by their own filters' tests; ext2, gzip, luks, tar and xz need an
# image of their format (filters' own tests); tls-fallback needs TLS.
SIMPLE_CONFIGS = {
    "blocksize": ["minblock=4k", "maxdata=64k"],
    "blocksize-policy": ["blocksize-preferred=64k"],
    "cache": [],
    "cacheextents": [],
    "checkwrite": [],
    "cow": [],
    "delay": ["rdelay=1ms", "wdelay=1ms"],
    "error": ["error-rate=0"],
    "exportname": ["default-export=foo"],
    "fua": ["fuamode=emulate"],
    "limit": ["limit=4"],
    "multi-conn": ["multi-conn-mode=emulate"],
    "nocache": [],
    "noextents": [],
    "nofilter": [],
    "noparallel": [],
    "nozero": [],
    "offset": ["offset=64k", "range=512k"],
    "protect": ["protect=0-4095"],
    "rate": ["rate=1G"],
    "readahead": [],
    "retry": ["retries=2"],
    "retry-request": ["retry-request-retries=2"],
    "scan": [],
    "swab": ["swab-bits=32"],
    "truncate": ["truncate=700k"],
}


def client_view(srv, writable):
    """What a client can see of SRV: its flags, its map, its contents
    after a few writes of a fixed random pattern."""
    h = connect(srv)
    view = export_flags(h)
    size = h.get_size()
    view["map"] = block_status(h, min(size, 1 * MiB), 0)
    if writable and not h.is_read_only():
        rnd = random.Random(7)
        for _ in range(8):
            n = rnd.choice([4096, 8192, 65536])
            off = rnd.randrange(0, size - n) // 4096 * 4096
            buf = bytes(rnd.getrandbits(8) for _ in range(n))
            errno_of(lambda: h.pwrite(buf, off))
        errno_of(h.flush)
    digest = hashlib.sha256()
    for off in range(0, size, 64 * KiB):
        n = min(64 * KiB, size - off)
        try:
            digest.update(h.pread(n, off))
        except nbd.Error as e:
            digest.update(b"error %d" % e.errnum)
    view["sha256"] = digest.hexdigest()
    h.shutdown()
    return view


DEBIAN_MEMORY = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins/" \
    "nbdkit-memory-plugin.so"


@pytest.mark.parametrize("plugin", ["memory", DEBIAN_MEMORY],
                         ids=["our-memory", "debian-memory"])
@pytest.mark.parametrize("name", sorted(SIMPLE_CONFIGS))
def test_debian_filter_under_nbdsrv(server, name, plugin):
    """Each Debian filter .so runs under nbdsrv, over our memory plugin
    and over Debian's, and a client sees what it sees under Debian's
    nbdkit (with Debian's memory plugin)."""
    path = debian_filter(name)
    config = ["1M"] + SIMPLE_CONFIGS[name]
    ours = client_view(server("--filter=" + path, plugin, *config,
                              impl="nbdsrv"), writable=True)
    theirs = client_view(server("--filter=" + path, "memory", *config,
                                impl="nbdkit"), writable=True)
    assert ours == theirs


# The Debian filter binaries that need an input of their own (a
# compressed image, a tar file, a partition table, a map, a log file):
# each builds it in TMP and returns the server arguments after
# --filter.  Over the file plugin (ours under nbdsrv, Debian's under
# nbdkit) unless the filter needs nothing below.
def run_ok(cmd, input=None):
    """Run a tool that makes a test input; fail with what it said."""
    r = subprocess.run(cmd, input=input, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    assert r.returncode == 0, "%s: %s" % (cmd[0], r.stdout.decode())


def pattern_file(tmp, name="plain.img", size=1 * MiB):
    path = tmp / name
    path.write_bytes(random.Random(11).randbytes(size))
    return path


def input_gzip(tmp):
    run_ok(["gzip", "-k", str(pattern_file(tmp))])
    return ["file", str(tmp / "plain.img.gz")]


def input_xz(tmp):
    run_ok(["xz", "-k", "--block-size=65536", str(pattern_file(tmp))])
    return ["file", str(tmp / "plain.img.xz")]


def input_tar(tmp):
    pattern_file(tmp)
    run_ok(["tar", "-C", str(tmp), "-cf", str(tmp / "a.tar"),
            "plain.img"])
    return ["file", str(tmp / "a.tar"), "tar-entry=plain.img"]


def input_partition(tmp):
    disk = pattern_file(tmp, "disk.img", 4 * MiB)
    run_ok(["sfdisk", "-q", str(disk)],
           input=b"label: dos\n2048,2048\n4096,2048\n")
    return ["file", str(disk), "partition=2"]


def input_luks(tmp):
    # cryptsetup with a fixed iteration count: qemu-img times PBKDF2
    # and now and then fails to ("Unable to get accurate CPU usage").
    # LUKSv1 puts the data 2 MiB in: 1 MiB of it.
    disk = tmp / "luks.img"
    disk.write_bytes(bytes(3 * MiB))
    (tmp / "pass").write_text("s3cret")
    run_ok(["cryptsetup", "luksFormat", "-q", "--type", "luks1",
            "--pbkdf-force-iterations", "1000", "--key-file",
            str(tmp / "pass"), str(disk)])
    return ["file", str(disk), "passphrase=+" + str(tmp / "pass")]


def input_ext2(tmp):
    root = tmp / "root"
    root.mkdir()
    pattern_file(root, "inside.img", 256 * KiB)
    run_ok(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(root),
            str(tmp / "fs.img"), "4M"])
    return ["file", str(tmp / "fs.img"), "ext2file=/inside.img"]


def input_ddrescue(tmp):
    (tmp / "map").write_text("# Mapfile\n0x00000000 + 1\n"
                             "0x00000000 0x00080000 +\n"
                             "0x00080000 0x00080000 -\n")
    return ["file", str(pattern_file(tmp)),
            "ddrescue-mapfile=" + str(tmp / "map")]


def input_extentlist(tmp):
    (tmp / "extents").write_text("0 65536\n65536 196608 hole,zero\n"
                                 "262144 786432\n")
    return ["file", str(pattern_file(tmp)),
            "extentlist=" + str(tmp / "extents")]


def input_none(config):
    return lambda tmp: ["memory", "1M"] + config


FORMAT_CONFIGS = {
    "ddrescue": input_ddrescue,
    "ext2": input_ext2,
    "extentlist": input_extentlist,
    "gzip": input_gzip,
    "ip": input_none(["allow=anyunix", "deny=all"]),
    "log": lambda tmp: ["memory", "1M", "logfile=" + str(tmp / "log")],
    "luks": input_luks,
    "partition": input_partition,
    "pause": lambda tmp: ["memory", "1M",
                          "pause-control=" + str(tmp / "ctl")],
    "stats": lambda tmp: ["memory", "1M", "statsfile=" + str(tmp / "st")],
    "tar": input_tar,
    "tls-fallback": input_none([]),
    "xz": input_xz,
}


@pytest.mark.parametrize("name", sorted(FORMAT_CONFIGS))
def test_debian_format_filter_under_nbdsrv(server, tmp_path, name):
    """The Debian filter binaries that need an input file of their own
    run under nbdsrv over our plugins and show a client what they show
    under Debian's nbdkit with its plugins (each server with a fresh
    copy of the input, so writes do not meet)."""
    made = tmp_path / "input"
    made.mkdir()
    args = FORMAT_CONFIGS[name](made)   # once: a LUKS key is random
    views = []
    for impl in ("nbdsrv", "nbdkit"):
        tmp = tmp_path / impl
        shutil.copytree(made, tmp)
        own = [a.replace(str(made), str(tmp)) for a in args]
        srv = server("--filter=" + debian_filter(name), *own, impl=impl)
        views.append(client_view(srv, writable=True))
    assert views[0] == views[1]
    assert views[0]["sha256"] != hashlib.sha256(b"").hexdigest()


def exit_status_after_one_client(server, impl, name, params, tmp):
    """Start IMPL with Debian's exitlast or exitwhen filter (NAME) and
    its PARAMS, let one client in and out, and return the server's exit
    status (bounded wait)."""
    srv = server("--filter=" + debian_filter(name), "memory", "1M", *params,
                 impl=impl)
    h = connect(srv)
    h.pread(512, 0)
    (tmp / "go").write_text("")
    h.shutdown()
    try:
        return srv.proc.wait(30)
    except subprocess.TimeoutExpired:
        return "still running"


@pytest.mark.parametrize("name", ["exitlast", "exitwhen"])
def test_debian_exit_filter_under_nbdsrv(server, tmp_path, name):
    """exitlast and exitwhen stop the server when the last client has
    gone (exitwhen once its condition holds): the same under nbdsrv as
    under nbdkit."""
    got = []
    for impl in ("nbdsrv", "nbdkit"):
        tmp = tmp_path / impl
        tmp.mkdir()
        params = []
        if name == "exitwhen":
            params = ["exit-when-file-created=" + str(tmp / "go"),
                      "exit-when-poll=1"]
        got.append(exit_status_after_one_client(server, impl, name, params,
                                                tmp))
    assert got == [0, 0]


def test_every_debian_filter_is_covered():
    """Every filter Debian ships runs under nbdsrv in one of the tests
    above, so a new one is not silently untested."""
    exits = {"exitlast", "exitwhen"}
    shipped = {f[len("nbdkit-"):-len("-filter.so")]
               for f in os.listdir(DEBIAN_FILTERS) if f.endswith(".so")}
    assert shipped - set(SIMPLE_CONFIGS) - set(FORMAT_CONFIGS) - exits \
        == set()


def stack_contents(server, impl, filters):
    """Random writes, trims and zeroes through a stack of three or more
    filters, then the whole disk read back."""
    args = ["--filter=" + debian_filter(f) for f in filters]
    srv = server(*args, "memory", "4M", "offset=1M", "truncate=2M",
                 impl=impl)
    h = connect(srv)
    size = h.get_size()
    ops = ["write", "write"] + ["trim"] * h.can_trim() + \
        ["zero"] * h.can_zero()
    rnd = random.Random(11)
    for _ in range(40):
        n = rnd.choice([512, 4096, 65536])
        off = rnd.randrange(0, size - n)
        op = rnd.choice(ops)
        if op == "write":
            h.pwrite(bytes([rnd.getrandbits(8)]) * n, off)
        elif op == "trim":
            h.trim(n, off)
        else:
            h.zero(n, off)
    data = h.pread(size, 0)
    h.shutdown()
    return size, ops, hashlib.sha256(data).hexdigest()


def test_stack_of_four_filters(server):
    """cow over blocksize over offset over truncate: the same disk
    under nbdsrv and nbdkit after the same random requests."""
    filters = ["cow", "blocksize", "offset", "truncate"]
    ours = stack_contents(server, "nbdsrv", filters)
    # truncate (below offset) makes 2M of the 4M disk, offset skips 1M.
    assert ours[:2] == (1 * MiB, ["write", "write", "trim"])
    assert ours == stack_contents(server, "nbdkit", filters)
