"""File-backed plugins (file, split, partitioning): each test runs our
plugin under nbdsrv and Debian's plugin of the same name under nbdkit,
with the same command line on two identical copies of the backing
files, and checks that real clients (libnbd, nbdinfo, qemu-img,
nbdcopy, sfdisk) see the same thing, and that the backing files end up
with the same bytes and, for the file plugin, the same allocation.

The file plugin's zeroing fallbacks depend on the file system, so its
tests run on the temporary directory (ext4 or similar) and on a tmpfs.
"""
import os
import random
import shutil
import subprocess

import nbd
import pytest

from conftest import BINARIES
from util import block_status, connect, errno_of
from util import export_flags as common_export_flags

PAGE = 65536


# ---------------------------------------------------------------------
# Helpers

def fs_type(path):
    """File system type of the mount holding PATH, from /proc/mounts."""
    path = os.path.realpath(path)
    best, kind = "", None
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            mnt = fields[1]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) \
                    and len(mnt) >= len(best):
                best, kind = mnt, fields[2]
    return kind


def tmpfs_dir(tmp_path):
    """A private directory on tmpfs, or skip the test."""
    if fs_type("/dev/shm") != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs")
    d = "/dev/shm/nbdsrv-test-%d-%s" % (os.getpid(), tmp_path.name)
    os.makedirs(d)
    return d


@pytest.fixture(params=["disk", "tmpfs"])
def fsdir(request, tmp_path):
    """A directory on a disk file system or on a tmpfs (removed after)."""
    if request.param == "disk":
        d = str(tmp_path / "data")
        os.makedirs(d)
        if fs_type(d) == "tmpfs":
            pytest.skip("the temporary directory is itself a tmpfs")
        yield d
        return
    d = tmpfs_dir(tmp_path)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_sparse(path, size, chunks):
    """Create PATH of SIZE bytes with data only at CHUNKS [(offset, bytes)]."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in chunks:
            f.seek(off)
            f.write(data)


def twin_dirs(base):
    """Two sibling directories, one per server, holding identical files."""
    a, b = os.path.join(base, "ours"), os.path.join(base, "theirs")
    os.makedirs(a)
    os.makedirs(b)
    return a, b


def start_pair(server, name, args_of_dir, dirs, readonly=False):
    """Our plugin on DIRS[0] and Debian's on DIRS[1]; ARGS_OF_DIR maps a
    directory to the plugin arguments."""
    flags = ["-r"] if readonly else []
    ours = server(*(flags + [name] + args_of_dir(dirs[0])), impl="nbdsrv")
    theirs = server(*(flags + [name] + args_of_dir(dirs[1])), impl="nbdkit")
    return ours, theirs


def export_flags(h):
    """The common export flags, and whether base:allocation is offered."""
    return dict(common_export_flags(h), can_meta_context=h.can_meta_context(
        nbd.CONTEXT_BASE_ALLOCATION))


def read_queries(size, seed):
    if size == 0:
        return []
    rnd = random.Random(seed)
    q = [(min(size, 4 << 20), 0), (min(size, 13), size - min(size, 13))]
    for _ in range(40):
        off = rnd.randrange(size)
        q.append((rnd.randint(1, min(size - off, 200000)), off))
    return q


def status_queries(size):
    if size == 0:
        return []
    q = [(min(size, 1 << 30), 0, 0), (min(size, 1 << 30), 0,
                                      nbd.CMD_FLAG_REQ_ONE)]
    if size > 4 * PAGE:
        q += [(PAGE, PAGE, 0), (1000, PAGE + 5, 0), (100, 0, 0),
              (size - 70001, 70001, 0), (4096, size - 4096, 0)]
    return q


def segments(sa, sb, offset):
    """Walk two block status answers [len, type, ...] together over the
    range both describe: (start, length, type in A, type in B)."""
    ia = ib = 0
    ra, rb = sa[0], sb[0]
    pos = offset
    while ia < len(sa) and ib < len(sb):
        n = min(ra, rb)
        yield pos, n, sa[ia + 1], sb[ib + 1]
        pos += n
        ra -= n
        rb -= n
        if ra == 0:
            ia += 2
            ra = sa[ia] if ia < len(sa) else 0
        if rb == 0:
            ib += 2
            rb = sb[ib] if ib < len(sb) else 0


def assert_same_status(a, b, count, offset, flags):
    """The same block status, except where one server says data and the
    other a zero hole over bytes that do read as zeroes.  On a disk file
    system an unwritten extent is data or a hole to SEEK_DATA depending
    on whether its pages are in the page cache, and nbdsrv, which answers
    reads of holes without reading them (R-18), caches fewer pages than
    nbdkit does."""
    sa, sb = block_status(a, count, offset, flags), \
        block_status(b, count, offset, flags)
    if sa == sb:
        return
    where = "block status count=%d offset=%d flags=%d: %r / %r" % (
        count, offset, flags, sa[:12], sb[:12])
    for start, n, x, y in segments(sa, sb, offset):
        if x != y:
            assert {x, y} == {0, 3}, where
            for off in range(start, start + n, 1 << 20):
                m = min(1 << 20, start + n - off)
                assert a.pread(m, off) == bytes(m), where


def assert_same_view(a, b, seed=0, statuses=None):
    assert export_flags(a) == export_flags(b)
    size = a.get_size()
    for count, offset in read_queries(size, seed):
        assert a.pread(count, offset) == b.pread(count, offset), \
            "pread count=%d offset=%d" % (count, offset)
    for count, offset, flags in (statuses or status_queries)(size):
        assert_same_status(a, b, count, offset, flags)


def apply_both(handles, fn):
    results = [errno_of(lambda h=h: fn(h)) for h in handles]
    assert results[0] == results[1], results
    return results[0]


def same_file(a, b, blocks=True):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read(), "%s and %s differ" % (a, b)
    if blocks:
        assert os.stat(a).st_blocks == os.stat(b).st_blocks, \
            "allocation differs: %s has %d blocks, %s has %d" % (
                a, os.stat(a).st_blocks, b, os.stat(b).st_blocks)


def run(*cmd, check=True):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          check=check, timeout=120)


def nbdinfo(*args):
    """nbdinfo output without the lines that name the socket."""
    out = run("nbdinfo", *args).stdout.decode()
    return [l for l in out.splitlines() if "uri:" not in l]


def dump_plugin(impl, name):
    """--dump-plugin lines that describe the plugin's shape.  Callback
    names are compared without the _v1 marker of API version 1."""
    out = run(BINARIES[impl], name, "--dump-plugin").stdout.decode()
    keep = []
    for line in out.splitlines():
        key = line.split("=", 1)[0]
        if key in ("path", "version", "api_version", "struct_size"):
            continue
        keep.append(line.replace("has__", "has_").replace("_v1=", "="))
    return sorted(keep)


def startup_error(impl, *args):
    """Run a server that must refuse ARGS; return its stderr lines."""
    p = subprocess.run([BINARIES[impl], "-f", "-U", "/nonexistent/sock"]
                       + list(args), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    assert p.returncode != 0, args
    return p.stderr.decode().splitlines()


# ---------------------------------------------------------------------
# file plugin

FILE_SIZE = 3 * 1024 * 1024 + 1000          # not a multiple of any block


def file_chunks():
    return [(PAGE, b"\x11" * 5000), (5 * PAGE + 100, b"\x22" * 200000),
            (FILE_SIZE - 10, b"\x33" * 10)]


FILE_OPS = [
    lambda h: h.pwrite(b"\x55" * 4096, 65536),
    lambda h: h.pwrite(b"\xaa" * 300000, 20 * PAGE - 50),
    lambda h: h.zero(PAGE, 20 * PAGE),                         # punch
    lambda h: h.zero(2 * PAGE, 21 * PAGE, nbd.CMD_FLAG_NO_HOLE),
    lambda h: h.zero(1000, 5 * PAGE + 7),                      # partial
    lambda h: h.zero(3000, 5 * PAGE + 40000, nbd.CMD_FLAG_NO_HOLE),
    lambda h: h.trim(PAGE, 6 * PAGE),
    lambda h: h.trim(100, 5 * PAGE + 3),                       # partial
    lambda h: h.pwrite(bytes(8192), 30 * PAGE),                # zero data
    lambda h: h.pwrite(b"\x01" * 10, 40 * PAGE + 30000, nbd.CMD_FLAG_FUA),
    lambda h: h.zero(PAGE, 42 * PAGE, nbd.CMD_FLAG_FUA),
    lambda h: h.trim(PAGE, 43 * PAGE, nbd.CMD_FLAG_FUA),
    lambda h: h.zero(4 << 20, 0),            # beyond the end: ENOSPC
    lambda h: h.flush(),
    lambda h: h.cache(1 << 20, 0),
]


@pytest.mark.parametrize("extra", [[], ["cache=none"], ["fadvise=random"],
                                   ["fadvise=sequential", "cache=none"],
                                   ["cache=default", "fadvise=normal"]],
                         ids=lambda e: "-".join(e) or "plain")
def test_file_matches_nbdkit(server, fsdir, extra):
    dirs = twin_dirs(fsdir)
    for d in dirs:
        make_sparse(os.path.join(d, "disk.img"), FILE_SIZE, file_chunks())
    ours, theirs = start_pair(
        server, "file", lambda d: [os.path.join(d, "disk.img")] + extra, dirs)
    handles = [connect(ours), connect(theirs)]
    assert_same_view(*handles)
    for i, op in enumerate(FILE_OPS):
        apply_both(handles, op)
        assert_same_view(*handles, seed=i)
        same_file(os.path.join(dirs[0], "disk.img"),
                  os.path.join(dirs[1], "disk.img"))


def test_file_magic_key_and_readonly(server, tmp_path):
    dirs = twin_dirs(str(tmp_path))
    for d in dirs:
        make_sparse(os.path.join(d, "disk.img"), FILE_SIZE, file_chunks())
    for readonly in (False, True):
        ours, theirs = start_pair(
            server, "file", lambda d: ["file=" + os.path.join(d, "disk.img")],
            dirs, readonly=readonly)
        handles = [connect(ours), connect(theirs)]
        assert_same_view(*handles)
        assert handles[0].is_read_only() == readonly
        if readonly:
            assert apply_both(handles, lambda h: h.pwrite(b"x", 0)) != 0


def test_file_immutable_falls_back_to_readonly(server, tmp_path):
    """A file that cannot be opened for writing is served read-only."""
    dirs = twin_dirs(str(tmp_path))
    paths = [os.path.join(d, "disk.img") for d in dirs]
    for p in paths:
        make_sparse(p, FILE_SIZE, file_chunks())
    if run("chattr", "+i", *paths, check=False).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        ours, theirs = start_pair(server, "file", lambda d: [
            os.path.join(d, "disk.img")], dirs)
        handles = [connect(ours), connect(theirs)]
        assert_same_view(*handles)
        assert handles[0].is_read_only()
    finally:
        run("chattr", "-i", *paths)


def test_file_nbdinfo_and_map(server, fsdir):
    dirs = twin_dirs(fsdir)
    for d in dirs:
        make_sparse(os.path.join(d, "disk.img"), FILE_SIZE, file_chunks())
    ours, theirs = start_pair(
        server, "file", lambda d: [os.path.join(d, "disk.img")], dirs)
    assert nbdinfo(ours.uri) == nbdinfo(theirs.uri)
    assert nbdinfo("--map", ours.uri) == nbdinfo("--map", theirs.uri)
    assert nbdinfo("--list", ours.uri) == nbdinfo("--list", theirs.uri)


def test_file_qemu_img(server, tmp_path):
    # A whole number of sectors: qemu's NBD driver rounds sizes up.
    size = FILE_SIZE & ~511
    dirs = twin_dirs(str(tmp_path))
    for d in dirs:
        make_sparse(os.path.join(d, "disk.img"), size, file_chunks()[:2])
    ours, theirs = start_pair(
        server, "file", lambda d: [os.path.join(d, "disk.img")], dirs)
    maps = [run("qemu-img", "map", "--output=json", "-f", "raw", s.uri)
            .stdout for s in (ours, theirs)]
    assert maps[0] == maps[1]
    outs = [str(tmp_path / ("out%d.img" % i)) for i in range(2)]
    for s, out in zip((ours, theirs), outs):
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri, out)
    same_file(outs[0], outs[1])
    same_file(outs[0], os.path.join(dirs[0], "disk.img"), blocks=False)

    # And the other way: qemu-img writes through the plugin.
    src = str(tmp_path / "src.img")
    make_sparse(src, size, [(7, b"qemu" * 1000), (2 << 20, b"z" * 99)])
    for s in (ours, theirs):
        run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, s.uri)
    same_file(os.path.join(dirs[0], "disk.img"),
              os.path.join(dirs[1], "disk.img"))
    same_file(src, os.path.join(dirs[0], "disk.img"), blocks=False)


def make_export_dir(d):
    make_sparse(os.path.join(d, "one.img"), 1 << 20, [(100, b"one")])
    make_sparse(os.path.join(d, "two"), 12345, [(0, b"two" * 100)])
    make_sparse(os.path.join(d, "..outside"), 512, [(0, b"out")])
    os.makedirs(os.path.join(d, "subdir"))
    os.mkfifo(os.path.join(d, "fifo"))
    os.symlink("one.img", os.path.join(d, "link"))
    os.symlink("/nonexistent/file", os.path.join(d, "dangling"))


def test_file_dir_exports(server, tmp_path):
    dirs = twin_dirs(str(tmp_path))
    for d in dirs:
        make_export_dir(d)
    ours, theirs = start_pair(server, "file", lambda d: ["dir=" + d], dirs)
    listing = nbdinfo("--list", ours.uri)
    assert listing == nbdinfo("--list", theirs.uri)
    names = sorted(l.split('"')[1] for l in listing if l.startswith("export="))
    assert names == ["..outside", "link", "one.img", "two"]

    for name in names:
        a, b = connect(ours, name), connect(theirs, name)
        assert_same_view(a, b)
        apply_both([a, b], lambda h: h.pwrite(b"written", 3))
    for d in dirs[1:]:
        for name in ("one.img", "two", "..outside"):
            same_file(os.path.join(dirs[0], name), os.path.join(d, name))

    # No default export, no subdirectories, no special files, no paths.
    for bad in ("", "subdir", "fifo", "dangling", "missing", "../ours",
                "subdir/x"):
        for s in (ours, theirs):
            with pytest.raises(nbd.Error):
                connect(s, bad.replace("/", "%2F"))


def test_file_directory_alias(server, tmp_path):
    """directory= is nbdkit's other spelling of dir=."""
    dirs = twin_dirs(str(tmp_path))
    for d in dirs:
        make_export_dir(d)
    ours, theirs = start_pair(server, "file", lambda d: ["directory=" + d],
                              dirs)
    listing = nbdinfo("--list", ours.uri)
    assert listing == nbdinfo("--list", theirs.uri)
    assert sum(l.startswith("export=") for l in listing) == 4


def test_file_dump_plugin():
    assert dump_plugin("nbdsrv", "file") == dump_plugin("nbdkit", "file")


@pytest.mark.parametrize("args,word", [
    (["cache=foo", "/dev/zero"], "cache=foo"),
    (["fadvise=fast", "/dev/zero"], "fadvise=fast"),
    (["frobnicate=1", "/dev/zero"], "frobnicate"),
    ([], "file="),
    (["/nonexistent/file.img"], "/nonexistent/file.img"),
    (["/dev/null"], "/dev/null"),
    (["dir=/dev/null"], "/dev/null"),
])
def test_file_bad_parameters(args, word):
    """Both refuse; ours says why in one line naming the parameter."""
    lines = startup_error("nbdsrv", "file", *args)
    startup_error("nbdkit", "file", *args)
    assert len(lines) == 1, lines
    assert word in lines[0], lines


def test_file_both_modes_refused(tmp_path):
    f = str(tmp_path / "f.img")
    make_sparse(f, 4096, [])
    lines = startup_error("nbdsrv", "file", f, "dir=" + str(tmp_path))
    startup_error("nbdkit", "file", f, "dir=" + str(tmp_path))
    assert len(lines) == 1 and "dir=" in lines[0], lines


def test_file_multi_conn_sees_writes(server, tmp_path):
    """Two connections share the page cache: a write on one is read on
    the other at once (what can_multi_conn promises)."""
    f = str(tmp_path / "disk.img")
    make_sparse(f, 1 << 20, [])
    srv = server("file", f)
    a, b = connect(srv), connect(srv)
    assert a.can_multi_conn()
    a.pwrite(b"shared" * 100, 4000)
    assert b.pread(600, 4000) == b"shared" * 100
    b.zero(600, 4000)
    assert a.pread(600, 4000) == bytes(600)


def test_file_grows_between_connections(server, tmp_path):
    f = str(tmp_path / "disk.img")
    make_sparse(f, 1 << 20, [])
    srv = server("file", f)
    assert connect(srv).get_size() == 1 << 20
    with open(f, "r+b") as fh:
        fh.truncate(3 << 20)
    assert connect(srv).get_size() == 3 << 20


def loop_attach(path):
    """Attach PATH to a free loop device; None when not possible."""
    try:
        p = run("losetup", "-f", "--show", path, check=False)
    except FileNotFoundError:
        return None
    dev = p.stdout.decode().strip()
    return dev if p.returncode == 0 and dev.startswith("/dev/loop") else None


def test_file_block_device(server, tmp_path):
    """Block devices: size by ioctl, zero and trim through the block
    layer.  nbdkit 1.32 fails a write zeroes that is not sector aligned
    with EINVAL; we write the zeroes instead."""
    images = [str(tmp_path / ("lo%d.img" % i)) for i in range(2)]
    for img in images:
        make_sparse(img, 4 << 20, [(0, b"\x77" * (4 << 20))])
    devs = []
    try:
        for img in images:
            dev = loop_attach(img)
            if dev is None:
                pytest.skip("no loop device available")
            devs.append(dev)
        ours = server("file", devs[0], impl="nbdsrv")
        theirs = server("file", devs[1], impl="nbdkit")
        handles = [connect(ours), connect(theirs)]
        statuses = lambda size: [(size, 0, 0)]
        assert_same_view(*handles, statuses=statuses)
        ops = [
            lambda h: h.zero(PAGE, PAGE),
            lambda h: h.zero(PAGE, 3 * PAGE, nbd.CMD_FLAG_NO_HOLE),
            lambda h: h.pwrite(b"\x12" * 5000, 7 * PAGE + 3,
                               nbd.CMD_FLAG_FUA),
            lambda h: h.flush(),
        ]
        for op in ops:
            apply_both(handles, op)
            assert_same_view(*handles, statuses=statuses)
        # Trim may leave anything behind, so only its success is compared.
        apply_both(handles, lambda h: h.trim(PAGE, 10 * PAGE))

        a = handles[0]
        a.zero(1000, 12 * PAGE + 7)
        assert a.pread(1002, 12 * PAGE + 6) == b"\x77" + bytes(1000) + b"\x77"
    finally:
        for dev in devs:
            run("losetup", "-d", dev, check=False)


# ---------------------------------------------------------------------
# split plugin

# No empty file here: nbdkit 1.32 writes to the wrong offset of the
# file after an empty one (test_split_empty_files checks ours).
SPLIT_FILES = [
    ("a", 100000, [(70000, b"abc" * 10)]),
    ("b", 5000, [(0, b"b" * 4)]),
    ("c", 300000, [(299999, b"c")]),
    ("d", 3 * PAGE, [(0, b"d" * (3 * PAGE))]),
    ("e", 1000, [(10, b"e")]),
]


def make_split_files(d, files=SPLIT_FILES):
    for name, size, chunks in files:
        make_sparse(os.path.join(d, name), size, chunks)
    return [os.path.join(d, name) for name, _, _ in files]


def split_args(d):
    return ["file=" + p for p in make_split_files(d)]


def file_bounds(files=SPLIT_FILES):
    """Offsets in the split disk where a file starts or ends."""
    pos, out = 0, [0]
    for _, size, _ in files:
        pos += size
        out.append(pos)
    return out


def joined(paths):
    return b"".join(open(p, "rb").read() for p in paths)


def split_statuses(size):
    """Block status requests nbdkit 1.32's split answers without
    crashing: it dies (SIGSEGV) when the last extent runs past the end
    of the request or with REQ_ONE, so every request here ends where a
    file ends."""
    bounds = file_bounds()
    return [(size, 0, 0), (size - 1000, 1000, 0),
            (bounds[1] - 99000, 99000, 0), (bounds[3] - 7, 7, 0),
            (bounds[4] - bounds[2], bounds[2], 0)]


def extent_types(entries, offset, count):
    """Per-byte-range types of an extent list, cut to [offset, +count)."""
    out, pos = [], offset
    for i in range(0, len(entries), 2):
        length, flags = entries[i], entries[i + 1]
        end = min(pos + length, offset + count)
        if end > pos:
            out.append((pos, end, flags))
        pos += length
    return out


def types_at(ranges, off):
    for start, end, flags in ranges:
        if start <= off < end:
            return flags
    raise AssertionError("offset %d not covered by %r" % (off, ranges))


def test_split_matches_nbdkit(server, tmp_path):
    dirs = twin_dirs(str(tmp_path))
    ours, theirs = start_pair(server, "split", split_args, dirs)
    handles = [connect(ours), connect(theirs)]
    assert_same_view(*handles, statuses=split_statuses)
    assert nbdinfo(ours.uri) == nbdinfo(theirs.uri)
    assert nbdinfo("--map", ours.uri) == nbdinfo("--map", theirs.uri)

    # Writes go to the first file only: nbdkit 1.32 writes to every
    # other file at the disk offset instead of the offset in that file,
    # growing it (test_split_writes_span_files checks ours).
    b = file_bounds()
    ops = [
        lambda h: h.pwrite(b"X" * 10, b[1] - 10),
        lambda h: h.pwrite(b"Y" * 60000, 100),
        lambda h: h.zero(20000, 1000),                     # emulated
        lambda h: h.zero(8000, 1, nbd.CMD_FLAG_FAST_ZERO),
        lambda h: h.pwrite(b"!", b[5]),                    # out of range
    ]
    for i, op in enumerate(ops):
        apply_both(handles, op)
        assert_same_view(*handles, seed=i, statuses=split_statuses)
    # nbdkit 1.32's split loops for ever on any cache request.
    handles[0].cache(b[5], 0)
    handles[0].cache(10, b[1] - 5)
    for name, _, _ in SPLIT_FILES:
        same_file(os.path.join(dirs[0], name), os.path.join(dirs[1], name),
                  blocks=False)


def test_split_writes_span_files(server, tmp_path):
    """Reads, writes and zeroes that cross file boundaries land in the
    right place of each file, checked against a model of the disk."""
    paths = make_split_files(str(tmp_path))
    srv = server("split", *["file=" + p for p in paths])
    h = connect(srv)
    model = bytearray(joined(paths))
    b = file_bounds()
    rnd = random.Random(9)
    ops = [(b[1] - 5, 10), (b[1] - 100, 400000), (b[4] - 3, 1003)]
    for _ in range(20):
        off = rnd.randrange(len(model))
        ops.append((off, rnd.randint(1, min(len(model) - off, 300000))))
    for i, (off, n) in enumerate(ops):
        if i % 3 == 2:
            h.zero(n, off)
            model[off:off + n] = bytes(n)
        else:
            data = bytes([i + 1]) * n
            h.pwrite(data, off)
            model[off:off + n] = data
        assert h.pread(len(model), 0) == model
    assert [os.path.getsize(p) for p in paths] == \
        [size for _, size, _ in SPLIT_FILES]
    assert joined(paths) == model


def test_split_block_status_any_range(server, tmp_path):
    """Any request agrees with the whole-disk map, which is checked
    against nbdkit above; REQ_ONE gives exactly one extent."""
    d = str(tmp_path)
    srv = server("split", *split_args(d))
    h = connect(srv)
    size = h.get_size()
    whole = extent_types(block_status(h, size, 0), 0, size)
    rnd = random.Random(5)
    for _ in range(60):
        off = rnd.randrange(size)
        count = rnd.randint(1, size - off)
        got = block_status(h, count, off)
        assert sum(got[0::2]) >= count
        for start, end, flags in extent_types(got, off, count):
            for probe in (start, end - 1):
                assert types_at(whole, probe) == flags, (off, count, got)
        one = block_status(h, count, off, nbd.CMD_FLAG_REQ_ONE)
        assert len(one) == 2 and one[1] == got[1]


def test_split_readonly_and_copy(server, tmp_path):
    dirs = twin_dirs(str(tmp_path))
    ours, theirs = start_pair(server, "split", split_args, dirs,
                              readonly=True)
    handles = [connect(ours), connect(theirs)]
    assert_same_view(*handles, statuses=split_statuses)
    assert apply_both(handles, lambda h: h.pwrite(b"x", 0)) != 0
    out = str(tmp_path / "joined")
    run("nbdcopy", ours.uri, out)
    assert open(out, "rb").read() == joined(
        [os.path.join(dirs[0], n) for n, _, _ in SPLIT_FILES])


def test_split_empty_files(server, tmp_path):
    """Empty files take no room anywhere, also between two others."""
    files = [("e0", 0, []), ("a", 3000, [(0, b"a" * 3000)]),
             ("e1", 0, []), ("e2", 0, []), ("b", 5000, [(4999, b"b")]),
             ("e3", 0, [])]
    paths = make_split_files(str(tmp_path), files)
    srv = server("split", *["file=" + p for p in paths])
    h = connect(srv)
    assert h.get_size() == 8000
    assert h.pread(8000, 0) == joined(paths)
    h.pwrite(b"W" * 10, 2995)
    h.zero(100, 7900)
    assert h.pread(8000, 0) == joined(paths)
    assert [os.path.getsize(p) for p in paths] == [0, 3000, 0, 0, 5000, 0]
    assert open(paths[4], "rb").read(5) == b"WWWWW"
    assert block_status(h, 8000, 0)[1::2] in ([0], [0, 3, 0], [0, 3])


def test_split_bare_file_names(server, tmp_path):
    dirs = twin_dirs(str(tmp_path))
    ours, theirs = start_pair(server, "split", make_split_files, dirs)
    assert_same_view(connect(ours), connect(theirs), statuses=split_statuses)


def test_split_dump_plugin():
    """Same callbacks as nbdkit's split, apart from the deliberate
    differences: parallel requests, a check for at least one file, and
    a long name."""
    def shape(impl):
        return [l for l in dump_plugin(impl, "split")
                if "thread_model" not in l
                and l not in ("has_config_complete=1", "has_longname=1")]
    assert shape("nbdsrv") == shape("nbdkit")


@pytest.mark.parametrize("args,word", [
    (["file=/nonexistent/part"], "/nonexistent/part"),
    (["file=/dev/null", "size=1M"], "size"),
    ([], "file="),
])
def test_split_bad_parameters(args, word):
    lines = startup_error("nbdsrv", "split", *args)
    assert len(lines) == 1 and word in lines[0], lines
    if args:            # nbdkit serves an empty disk without files
        startup_error("nbdkit", "split", *args)


# ---------------------------------------------------------------------
# partitioning plugin

def make_parts(d, sizes):
    """Files p1, p2, ... of SIZES, each with recognisable data."""
    names = []
    for i, size in enumerate(sizes, 1):
        name = "p%d" % i
        make_sparse(os.path.join(d, name), size,
                    [(0, (b"P%d" % i) * 10), (size - 1, b"E")])
        names.append(name)
    return names


def part_args(names, extra_before=(), extra_after=()):
    return list(extra_before) + ["file=" + n for n in names] + \
        list(extra_after)


def read_disk(h):
    size = h.get_size()
    out = bytearray()
    for off in range(0, size, 1 << 22):
        out += h.pread(min(1 << 22, size - off), off)
    return bytes(out)


def gpt_fields(disk):
    """Byte ranges of a GPT disk that hold random GUIDs or the CRCs that
    depend on them, with the entry array and header positions."""
    import struct
    hdr = disk[512:1024]
    assert hdr[:8] == b"EFI PART"
    hsize, = struct.unpack_from("<I", hdr, 12)
    alt, = struct.unpack_from("<Q", hdr, 32)
    nr, esize = struct.unpack_from("<II", hdr, 80)
    masks = []
    for hoff in (512, alt * 512):
        masks.append((hoff + 16, 4))                    # header CRC
        masks.append((hoff + 88, 4))                    # array CRC
        h = disk[hoff:hoff + 512]
        arr, = struct.unpack_from("<Q", h, 72)
        for i in range(nr):
            masks.append((arr * 512 + i * esize + 16, 16))   # unique GUID
    return masks


def check_gpt_crcs(disk):
    import struct
    import zlib
    for hoff in (512, struct.unpack_from("<Q", disk, 512 + 32)[0] * 512):
        h = bytearray(disk[hoff:hoff + 512])
        hsize, crc = struct.unpack_from("<II", h, 12)
        arr, = struct.unpack_from("<Q", h, 72)
        nr, esize, acrc = struct.unpack_from("<III", h, 80)
        h[16:20] = bytes(4)
        assert zlib.crc32(bytes(h[:hsize])) == crc
        assert zlib.crc32(disk[arr * 512:arr * 512 + nr * esize]) == acrc


def masked(disk, masks):
    b = bytearray(disk)
    for off, n in masks:
        b[off:off + n] = bytes(n)
    return bytes(b)


def sfdisk_dump(path):
    out = run("sfdisk", "--dump", path).stdout.decode()
    lines = []
    for l in out.splitlines():
        if l.startswith("device:"):
            continue
        l = l.replace(path, "DISK")
        l = ", ".join(f for f in l.split(", ") if not f.startswith("uuid="))
        lines.append(l)
    return lines


PART_CASES = [
    ("mbr3", [1 << 20, 100000, 3 << 20], [], []),
    ("gpt3", [1 << 20, 100000, 3 << 20], [], ["partition-type=gpt"]),
    ("mbr6-logical", [3000 * i for i in range(1, 7)], [],
     ["partition-type=mbr"]),
    ("mbr6-align512", [3000 * i for i in range(1, 7)], ["alignment=512"],
     ["partition-type=mbr"]),
    ("mbr4", [512, 513, 1000, 70000], ["alignment=4096"], []),
    ("auto-gpt5", [5000] * 5, [], []),
    ("gpt-align4k", [3000, 6000], ["alignment=4096"],
     ["partition-type=gpt"]),
    ("ids", [3000, 6000, 9000], ["mbr-id=0x7"], []),
    ("guids", [3000, 6000], ["type-guid=C12A7328-F81F-11D2-BA4B-"
                             "00A0C93EC93B"], ["partition-type=gpt"]),
    ("gpt130", [512] * 130, ["alignment=512"], []),
]


@pytest.mark.parametrize("sizes,before,after", [c[1:] for c in PART_CASES],
                         ids=[c[0] for c in PART_CASES])
def test_partitioning_layout_matches_nbdkit(server, tmp_path, monkeypatch,
                                            sizes, before, after):
    """Same files, same command line: the same disk, byte for byte,
    apart from GPT's random partition GUIDs and the CRCs over them."""
    monkeypatch.chdir(tmp_path)       # relative names become GPT names
    names = make_parts(str(tmp_path), sizes)
    args = part_args(names, before, after)
    ours = server("partitioning", *args, impl="nbdsrv")
    theirs = server("partitioning", *args, impl="nbdkit")
    a, b = connect(ours), connect(theirs)
    assert export_flags(a) == export_flags(b)
    assert nbdinfo(ours.uri) == nbdinfo(theirs.uri)
    disks = [read_disk(a), read_disk(b)]
    for i, disk in enumerate(disks):
        with open(str(tmp_path / ("disk%d" % i)), "wb") as f:
            f.write(disk)
    dumps = [sfdisk_dump(str(tmp_path / ("disk%d" % i))) for i in range(2)]
    assert dumps[0] == dumps[1]
    if disks[0][512:520] == b"EFI PART":
        check_gpt_crcs(disks[0])
        masks = gpt_fields(disks[1])
        assert masks == gpt_fields(disks[0])
        assert masked(disks[0], masks) == masked(disks[1], masks)
        assert disks[0][1024 + 16:1024 + 32] != disks[1][1024 + 16:1024 + 32]
    else:
        assert disks[0] == disks[1]

    # Each partition holds its file, byte for byte.
    out = run("sfdisk", "--json", str(tmp_path / "disk0")).stdout
    import json
    parts = [p for p in json.loads(out)["partitiontable"]["partitions"]
             if p["type"] not in ("f", "5")]
    assert len(parts) == len(names)
    for p, name in zip(parts, names):
        data = open(name, "rb").read()
        start = p["start"] * 512
        assert disks[0][start:start + len(data)] == data
        assert p["size"] == (len(data) + 511) // 512


def test_partitioning_writes_match_nbdkit(server, tmp_path):
    dirs = twin_dirs(str(tmp_path))
    sizes = [1 << 20, 100000, 3 << 20]
    for d in dirs:
        make_parts(d, sizes)
    ours, theirs = start_pair(server, "partitioning", lambda d: part_args(
        [os.path.join(d, n) for n in ("p1", "p2", "p3")]), dirs)
    handles = [connect(ours), connect(theirs)]
    mbr = handles[0].pread(512, 0)
    p2 = 4096 * 512
    ops = [
        lambda h: h.pwrite(b"W" * 1000, 2048 * 512 + 5),   # in p1
        lambda h: h.pwrite(b"X" * 10, p2 + 100000 - 5),    # p2 | padding
        lambda h: h.pwrite(bytes(100), p2 + 100000 + 10),  # zeroes: fine
        lambda h: h.pwrite(b"Y" * 10, 2048 * 512 - 5),     # padding | p1
        lambda h: h.pwrite(mbr, 0),                        # unchanged
        lambda h: h.pwrite(b"\x01", 446),                  # changed
        lambda h: h.zero(512, 0),                          # table
        lambda h: h.zero(4096, 2048 * 512 + 4096),         # in p1
        lambda h: h.pwrite(b"F" * 10, 6144 * 512, nbd.CMD_FLAG_FUA),
        lambda h: h.flush(),
        lambda h: h.cache(1 << 20, 0),
        lambda h: h.trim(4096, 0),
    ]
    for i, op in enumerate(ops):
        apply_both(handles, op)
        assert_same_view(*handles, seed=i)
    for n in ("p1", "p2", "p3"):
        same_file(os.path.join(dirs[0], n), os.path.join(dirs[1], n),
                  blocks=False)


def test_partitioning_gpt_table_is_read_only(server, tmp_path):
    names = make_parts(str(tmp_path), [5000, 6000])
    srv = server("partitioning", "partition-type=gpt",
                 *["file=" + str(tmp_path / n) for n in names])
    h = connect(srv)
    disk = read_disk(h)
    check_gpt_crcs(disk)
    h.pwrite(disk[:34 * 512], 0)                   # same bytes: accepted
    h.pwrite(disk[-33 * 512:], len(disk) - 33 * 512)
    # A byte that differs from the table's (GUIDs and CRCs are random,
    # so a fixed value would match 1 time in 256).
    for off in (512 + 100, 1024 + 16, len(disk) - 512 + 16):
        with pytest.raises(nbd.Error) as e:
            h.pwrite(bytes([disk[off] ^ 0xff]), off)
        assert e.value.errnum == 5
    assert read_disk(h) == disk
    h.pwrite(b"new data", 2048 * 512)
    assert open(str(tmp_path / "p1"), "rb").read(8) == b"new data"


def test_partitioning_too_big_for_mbr(server, tmp_path, monkeypatch):
    """Over about 2 TB of files the default becomes GPT, and an explicit
    MBR is refused by both."""
    if fs_type(str(tmp_path)) == "tmpfs":
        pytest.skip("needs a file system with sparse 2 TiB files")
    monkeypatch.chdir(tmp_path)
    for name, size in (("big", 1 << 41), ("fits", (1 << 41) - (6 << 20))):
        make_sparse(name, size, [(0, b"x")])
    ours = server("partitioning", "file=big", impl="nbdsrv")
    theirs = server("partitioning", "file=big", impl="nbdkit")
    assert nbdinfo(ours.uri) == nbdinfo(theirs.uri)
    assert connect(ours).pread(1, 512 + 1) == b"F"          # "EFI PART"
    ours = server("partitioning", "file=fits", impl="nbdsrv")
    theirs = server("partitioning", "file=fits", impl="nbdkit")
    assert nbdinfo(ours.uri) == nbdinfo(theirs.uri)
    assert connect(ours).pread(2, 510) == b"\x55\xaa"
    for impl in ("nbdsrv", "nbdkit"):
        startup_error(impl, "partitioning", "file=big", "partition-type=mbr")


def test_partitioning_dump_plugin():
    def shape(impl):
        return [l for l in dump_plugin(impl, "partitioning")
                if l != "has_longname=1"]
    assert shape("nbdsrv") == shape("nbdkit")


@pytest.mark.parametrize("args,word", [
    (["alignment=1000"], "alignment=1000"),
    (["alignment=0"], "alignment=0"),
    (["alignment=2M"], "alignment=2M"),
    (["mbr-id=0x100"], "mbr-id"),
    (["mbr-id=foo"], "mbr-id"),
    (["type-guid=xyz"], "type-guid=xyz"),
    (["partition-type=foo"], "partition-type=foo"),
    (["size=1M"], "size"),
])
def test_partitioning_bad_parameters(tmp_path, args, word):
    f = str(tmp_path / "p")
    make_sparse(f, 4096, [])
    lines = startup_error("nbdsrv", "partitioning", *(args + ["file=" + f]))
    startup_error("nbdkit", "partitioning", *(args + ["file=" + f]))
    assert len(lines) == 1 and word in lines[0], lines


def test_partitioning_bad_files(tmp_path):
    empty = str(tmp_path / "empty")
    make_sparse(empty, 0, [])
    for args, word in ((["file=" + empty], "empty"),
                       (["file=/nonexistent/p"], "/nonexistent/p"),
                       ([], "file=")):
        lines = startup_error("nbdsrv", "partitioning", *args)
        startup_error("nbdkit", "partitioning", *args)
        assert len(lines) == 1 and word in lines[0], lines


def test_partitioning_alignment_not_power_of_two(tmp_path):
    """nbdkit 1.32 aborts on an assertion; we refuse with a message."""
    f = str(tmp_path / "p")
    make_sparse(f, 4096, [])
    lines = startup_error("nbdsrv", "partitioning", "alignment=1536",
                          "file=" + f)
    assert len(lines) == 1 and "power of 2" in lines[0], lines
