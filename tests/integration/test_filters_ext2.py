"""The ext2 filter: one file inside an ext2/3/4 filesystem image.

Images are made without root or mounts (mkfs.ext2/3/4 -d DIR copies a
directory tree in), and checked afterwards with debugfs (dump a file)
and e2fsck -fn (the filesystem is consistent).  Each test runs under
the implementations in IMPLS: nbdsrv with our filter ("nbdsrv"),
Debian's nbdkit with its own ("nbdkit"), Debian's nbdkit with our .so
("ours"), and for plain reads and writes nbdsrv with Debian's .so
("theirs").  Where nbdkit 1.32 is wrong (docs/nbdkit-ext2-filter.md)
the test checks our behaviour, and pins nbdkit's so the page stays
true.
"""
import errno
import hashlib
import random
import subprocess
import threading

import nbd
import pytest

from conftest import BINARIES, filter_path
from util import errno_of

DEBIAN_EXT2 = "/usr/lib/x86_64-linux-gnu/nbdkit/filters/" \
    "nbdkit-ext2-filter.so"

OURS = ["nbdsrv", pytest.param("ours", marks=pytest.mark.nbdkit_plugin)]
IMPLS = ["nbdsrv", "nbdkit",
         pytest.param("ours", marks=pytest.mark.nbdkit_plugin)]
RW_IMPLS = IMPLS + ["theirs"]

# Hang protection for the programs the tests run.
RUN_TIMEOUT = 120


def run(cmd, **kw):
    """Run CMD (a list), failing the test with its output if it fails."""
    p = subprocess.run(cmd, capture_output=True, timeout=RUN_TIMEOUT, **kw)
    assert p.returncode == 0, "%s: %s" % (cmd, p.stderr)
    return p.stdout


def ext2_args(impl, filters=()):
    """(impl for conftest, --filter arguments): ext2 first (closest to
    the client), then FILTERS below it."""
    ext2 = {"nbdsrv": "ext2", "nbdkit": "ext2", "ours": filter_path("ext2"),
            "theirs": DEBIAN_EXT2}[impl]
    server_impl = "nbdkit" if impl in ("nbdkit", "ours") else "nbdsrv"
    return server_impl, ["--filter=" + f for f in [ext2] + list(filters)]


def start(server, impl, *args, filters=()):
    server_impl, fargs = ext2_args(impl, filters)
    return server(*fargs, *args, impl=server_impl)


def mkfs(tmp_path, files, fstype="ext4", size="32M", name="fs.img"):
    """An image of an FSTYPE filesystem holding FILES (path: bytes, or
    path: int for a sparse file of that size, or path: None for a
    directory); returns its path."""
    tree = tmp_path / (name + ".tree")
    tree.mkdir()
    for path, data in files.items():
        p = tree / path
        if data is None:
            p.mkdir(parents=True)
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, int):
            with open(p, "wb") as f:
                f.truncate(data)
        else:
            p.write_bytes(data)
    img = str(tmp_path / name)
    run(["mkfs." + fstype, "-q", "-F", "-d", str(tree), img, size])
    return img


def dump(img, path, tmp_path):
    """The contents of PATH in image IMG, read by debugfs."""
    out = tmp_path / "dumped"
    if out.exists():
        out.unlink()
    run(["debugfs", "-R", "dump %s %s" % (path, out), img])
    return out.read_bytes()


def fsck(img):
    """e2fsck's exit status on IMG, changing nothing (0: clean)."""
    return subprocess.run(["e2fsck", "-fn", img], capture_output=True,
                          timeout=RUN_TIMEOUT).returncode


def stop_settled(srv, export=""):
    """Stop SRV once it has closed every earlier connection, so the
    image is complete: a client's disconnect returns before the server
    has written out the filesystem, and SIGTERM would cut that short.
    Connections are serialized, so a new one is served only after."""
    h = nbd.NBD()
    h.connect_uri(srv.uri_for(export) if export else srv.uri)
    h.shutdown()
    srv.stop()


def data(n, seed):
    return random.Random(seed).randbytes(n)


def uri(srv, export=""):
    return srv.uri_for(export) if export else srv.uri


# ------------------------------------------------------------ reading

@pytest.mark.parametrize("fstype", ["ext2", "ext3", "ext4"])
@pytest.mark.parametrize("impl", RW_IMPLS)
def test_read_file(server, impl, fstype, tmp_path):
    """nbdinfo sees the file's size, nbdcopy and qemu-img its bytes."""
    disk = data(3 * 1000 * 1000 + 17, 1)
    img = mkfs(tmp_path, {"hello.txt": b"hello world\n",
                          "images/disk.raw": disk}, fstype=fstype)
    srv = start(server, impl, "file", img, "ext2file=/images/disk.raw")
    size = run(["nbdinfo", "--size", srv.uri], text=True)
    assert int(size) == len(disk)
    if impl in ("nbdkit", "theirs"):
        # nbdkit's filter gives the image's extents: copy without them
        # (test_nbdkit_extents_are_the_images).
        run(["nbdcopy", "--no-extents", srv.uri, str(tmp_path / "copy")])
        assert (tmp_path / "copy").read_bytes() == disk
        return
    run(["nbdcopy", srv.uri, str(tmp_path / "copy")])
    assert (tmp_path / "copy").read_bytes() == disk
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", srv.uri,
         str(tmp_path / "convert")])
    # qemu rounds a size up to whole 512-byte sectors, reading zeros.
    padded = disk + bytes(-len(disk) % 512)
    assert (tmp_path / "convert").read_bytes() == padded


@pytest.mark.parametrize("impl", RW_IMPLS)
def test_read_at_offsets(server, impl, tmp_path):
    """Unaligned reads across block boundaries, through libnbd."""
    disk = data(200000, 2)
    img = mkfs(tmp_path, {"f": disk}, fstype="ext2")
    srv = start(server, impl, "file", img, "ext2file=/f")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    for off, n in [(0, 1), (1, 1023), (1000, 5000), (4095, 2),
                   (199990, 10), (123457, 65536)]:
        assert h.pread(n, off) == disk[off:off + n]
    h.shutdown()


# ------------------------------------------------------------ writing

@pytest.mark.parametrize("impl", RW_IMPLS)
def test_write_lands_in_image(server, impl, tmp_path):
    """qemu-io writes, then debugfs finds them in the file and e2fsck
    finds the filesystem clean."""
    disk = data(1 << 20, 3)
    img = mkfs(tmp_path, {"a.txt": b"other file\n", "disk.raw": disk})
    srv = start(server, impl, "file", img, "ext2file=/disk.raw")
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x41 4096 8192",
         "-c", "write -P 0x42 100 7", "-c", "write -z 65536 65536",
         "-c", "write -P 0x43 1048575 1", srv.uri])
    stop_settled(srv)
    want = bytearray(disk)
    want[4096:4096 + 8192] = b"A" * 8192
    want[100:107] = b"B" * 7
    want[65536:131072] = bytes(65536)
    want[1048575] = ord("C")
    assert dump(img, "/disk.raw", tmp_path) == bytes(want)
    assert dump(img, "/a.txt", tmp_path) == b"other file\n"
    assert fsck(img) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_write_into_holes(server, impl, tmp_path):
    """Writes into a sparse file allocate blocks; the file reads back
    and the filesystem is clean once the client is gone."""
    img = mkfs(tmp_path, {"sparse.img": 8 << 20})
    srv = start(server, impl, "file", img, "ext2file=/sparse.img")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"x" * 5000, 3 << 20)
    h.pwrite(b"y" * 3, (8 << 20) - 3)
    assert h.pread(5002, (3 << 20) - 1) == b"\0" + b"x" * 5000 + b"\0"
    h.shutdown()
    stop_settled(srv)
    want = bytearray(8 << 20)
    want[3 << 20:(3 << 20) + 5000] = b"x" * 5000
    want[-3:] = b"yyy"
    assert dump(img, "/sparse.img", tmp_path) == bytes(want)
    assert fsck(img) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_flush_leaves_a_consistent_image(server, impl, tmp_path):
    """After a write into a hole and a flush, with the client still
    connected, e2fsck finds the image clean with our filter.  nbdkit's
    flush leaves the block bitmap in memory (documented difference)."""
    img = mkfs(tmp_path, {"sparse.img": 4 << 20})
    srv = start(server, impl, "file", img, "ext2file=/sparse.img")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"z" * 4096, 2 << 20)
    h.flush()
    status = fsck(img)
    h.pwrite(b"w" * 4096, 1 << 20, nbd.CMD_FLAG_FUA)
    status_fua = fsck(img)
    h.shutdown()
    if impl == "nbdkit":
        assert status != 0 and status_fua != 0
    else:
        assert status == 0 and status_fua == 0
    stop_settled(srv)
    assert fsck(img) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_flags(server, impl, tmp_path):
    """What the client is offered on a writable image."""
    img = mkfs(tmp_path, {"f": data(10000, 4)})
    srv = start(server, impl, "file", img, "ext2file=/f")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    flags = {n: getattr(h, n)() for n in
             ["is_read_only", "can_flush", "can_fua", "can_trim",
              "can_zero", "can_fast_zero", "can_multi_conn", "can_cache"]}
    assert h.get_size() == 10000
    h.shutdown()
    assert flags == {"is_read_only": False, "can_flush": True,
                     "can_fua": True, "can_trim": False, "can_zero": True,
                     "can_fast_zero": False, "can_multi_conn": False,
                     "can_cache": True}


@pytest.mark.parametrize("impl", RW_IMPLS)
def test_inside_a_partition(server, impl, tmp_path):
    """The filesystem in partition 2 of an MBR disk, found by the
    partition filter below ext2."""
    disk = data(100000, 13)
    fs = mkfs(tmp_path, {"boot/disk.img": disk}, size="8M")
    img = str(tmp_path / "disk.img")
    with open(img, "wb") as f:
        f.truncate(20 << 20)
    run(["sfdisk", "-q", img], input=b"1MiB,4MiB,L\n,8MiB,L\n")
    with open(fs, "rb") as src, open(img, "r+b") as dst:
        dst.seek(5 << 20)
        dst.write(src.read())
    srv = start(server, impl, "file", img, "partition=2",
                "ext2file=/boot/disk.img", filters=["partition"])
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    assert h.pread(len(disk), 0) == disk
    h.pwrite(b"part", 99996)
    h.shutdown()
    stop_settled(srv)
    with open(img, "rb") as src:
        src.seek(5 << 20)
        (tmp_path / "fs-out.img").write_bytes(src.read(8 << 20))
    assert dump(str(tmp_path / "fs-out.img"), "/boot/disk.img",
                tmp_path) == disk[:99996] + b"part"


@pytest.mark.parametrize("impl", IMPLS)
def test_fragmented_file(server, impl, tmp_path):
    """Writes into a sparse file in random order scatter its blocks
    over the disk; reads of any alignment across them, and debugfs,
    see what was written."""
    size = 1 << 20
    img = mkfs(tmp_path, {"s": size}, fstype="ext4")
    srv = start(server, impl, "file", img, "ext2file=/s")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    rnd = random.Random(14)
    model = bytearray(size)
    offsets = list(range(0, size, 8192))
    rnd.shuffle(offsets)
    for off in offsets[:60]:
        chunk = bytes([rnd.randrange(1, 256)]) * 3000
        h.pwrite(chunk, off + 100)
        model[off + 100:off + 3100] = chunk
    assert h.pread(size, 0) == model
    for _ in range(40):
        off = rnd.randrange(size)
        n = rnd.randrange(1, min(size - off, 70000) + 1)
        assert h.pread(n, off) == model[off:off + n], (off, n)
    h.shutdown()
    stop_settled(srv)
    stat = run(["debugfs", "-R", "stat /s", img], text=True)
    assert stat.count("-") > 10, "the file is not fragmented: " + stat
    assert dump(img, "/s", tmp_path) == bytes(model)
    assert fsck(img) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_inline_data(server, impl, tmp_path):
    """ext4 with inline_data keeps a small file in its inode: it reads
    and writes too."""
    img = str(tmp_path / "inline.img")
    tree = tmp_path / "inline.tree"
    tree.mkdir()
    (tree / "t").write_bytes(b"tiny inline\n")
    run(["mkfs.ext4", "-q", "-F", "-O", "inline_data", "-d", str(tree),
         img, "32M"])
    assert "Size of inline data" in run(["debugfs", "-R", "stat /t", img],
                                        text=True)
    srv = start(server, impl, "file", img, "ext2file=/t")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    assert h.pread(12, 0) == b"tiny inline\n"
    h.pwrite(b"TINY", 0)
    assert h.pread(12, 0) == b"TINY inline\n"
    h.shutdown()
    stop_settled(srv)
    # debugfs dumps the whole inline area (60 bytes), not the size.
    assert dump(img, "/t", tmp_path)[:12] == b"TINY inline\n"
    assert "Size: 12\n" in run(["debugfs", "-R", "stat /t", img], text=True)
    assert fsck(img) == 0


# ------------------------------------------------------------ read-only

@pytest.mark.parametrize("impl", IMPLS)
def test_read_only_layer_below(server, impl, tmp_path):
    """Over the xz filter (read-only) the file is served read-only."""
    disk = data(300000, 5)
    img = mkfs(tmp_path, {"f.bin": disk})
    run(["xz", "-k", "-T1", "--block-size=1MiB", img])
    srv = start(server, impl, "file", img + ".xz", "ext2file=/f.bin",
                filters=["xz"])
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    assert h.is_read_only()
    assert not h.can_fua() and not h.can_zero()
    assert h.pread(len(disk), 0) == disk
    assert errno_of(lambda: h.pwrite(b"x", 0)) == errno.EPERM
    h.flush()
    h.shutdown()


@pytest.mark.parametrize("impl", IMPLS)
def test_readonly_flag_writes_nothing(server, impl, tmp_path):
    """With -r the image is not changed, not even by a flush."""
    img = mkfs(tmp_path, {"f.bin": data(50000, 6)})
    before = hashlib.sha256(open(img, "rb").read()).hexdigest()
    srv = start(server, impl, "-r", "file", img, "ext2file=/f.bin")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    assert h.is_read_only()
    assert h.pread(50000, 0) == data(50000, 6)
    h.flush()
    h.shutdown()
    stop_settled(srv)
    assert hashlib.sha256(open(img, "rb").read()).hexdigest() == before


# ------------------------------------------------------------ exportname

@pytest.mark.parametrize("impl", IMPLS)
def test_exportname_picks_the_file(server, impl, tmp_path):
    """ext2file=exportname: two files, each by its path; the default
    export is refused and no export is listed."""
    one, two = data(5000, 7), data(70000, 8)
    img = mkfs(tmp_path, {"one.bin": one, "dir/two.bin": two})
    srv = start(server, impl, "file", img, "ext2file=exportname")
    for export, want in [("/one.bin", one), ("/dir/two.bin", two),
                         ("dir/two.bin", two)]:
        out = tmp_path / "out"
        run(["nbdcopy", srv.uri_for(export), str(out)])
        assert out.read_bytes() == want, export
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x61 0 10",
         srv.uri_for("/dir/two.bin")])
    p = subprocess.run(["nbdinfo", "--size", srv.uri], capture_output=True,
                       text=True, timeout=RUN_TIMEOUT)
    assert p.returncode != 0
    listing = run(["nbdinfo", "--list", "--json", srv.uri], text=True)
    assert '"exports": [\n  ]' in listing or '"exports": []' in listing
    assert srv.alive()
    stop_settled(srv, "/one.bin")
    assert dump(img, "/dir/two.bin", tmp_path) == b"a" * 10 + two[10:]
    assert 'default export ("") not permitted' in srv.stderr_text()


# ------------------------------------------------------------ extents

@pytest.mark.parametrize("impl", OURS)
def test_extents_describe_the_file(server, impl, tmp_path):
    """Holes of a sparse file are holes, data is data, and a write into
    a hole shows at once (documented difference: nbdkit passes the
    image's extents through)."""
    img = mkfs(tmp_path, {"sparse.img": 4 << 20}, size="64M")
    srv = start(server, impl, "file", img, "ext2file=/sparse.img")
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(srv.uri)
    h.pwrite(b"d" * 8192, 1 << 20)
    entries = []

    def cb(meta, off, e, err):
        entries.extend(zip(e[0::2], e[1::2]))
        return 0

    h.block_status(4 << 20, 0, cb)
    h.shutdown()
    hole = nbd.STATE_HOLE | nbd.STATE_ZERO
    assert entries == [(1 << 20, hole), (8192, 0),
                       ((3 << 20) - 8192, hole)]


def test_nbdkit_extents_are_the_images(server, tmp_path):
    """Pins the documented difference: nbdkit 1.32's filter reports
    the image's holes at the file's offsets, so a file written in full
    shows holes, and nbdcopy, trusting them, copies zeros."""
    disk = data(3 << 20, 11)
    img = mkfs(tmp_path, {"pad": data(1 << 20, 12), "disk.raw": disk})
    srv = start(server, "nbdkit", "file", img, "ext2file=/disk.raw")
    listing = run(["nbdinfo", "--map", srv.uri], text=True)
    assert "hole" in listing
    run(["nbdcopy", srv.uri, str(tmp_path / "copy")])
    assert (tmp_path / "copy").read_bytes() != disk


@pytest.mark.parametrize("impl", OURS)
def test_unwritten_extent(server, impl, tmp_path):
    """Blocks allocated but never written (fallocate) read as zeros and
    are reported as zeros that are not a hole; written, they are data."""
    img = mkfs(tmp_path, {"s": 1 << 20}, size="32M")
    run(["debugfs", "-w", "-R", "fallocate /s 10 99", img])
    assert "[u]" in run(["debugfs", "-R", "stat /s", img], text=True)
    srv = start(server, impl, "file", img, "ext2file=/s")
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(srv.uri)
    entries = []

    def cb(meta, off, e, err):
        entries.extend(zip(e[0::2], e[1::2]))
        return 0

    h.block_status(1 << 20, 0, cb)
    assert h.pread(200000, 0) == bytes(200000)
    hole = nbd.STATE_HOLE | nbd.STATE_ZERO
    assert [t for _, t in entries] == [hole, nbd.STATE_ZERO, hole]
    # 1 KiB blocks (a 32 MiB filesystem): blocks 10 to 99.
    assert entries[0][0] == 10 * 1024 and entries[1][0] == 90 * 1024
    h.pwrite(b"u" * 1024, 20 * 1024)
    assert h.pread(3072, 19 * 1024) == bytes(1024) + b"u" * 1024 + \
        bytes(1024)
    entries.clear()
    h.block_status(3072, 19 * 1024, cb)
    assert entries == [(1024, nbd.STATE_ZERO), (1024, 0),
                       (1024, nbd.STATE_ZERO)]
    h.shutdown()
    stop_settled(srv)
    assert fsck(img) == 0


@pytest.mark.parametrize("impl", OURS)
def test_copy_of_a_sparse_file(server, impl, tmp_path):
    """nbdcopy and qemu-img convert, which skip holes, copy a file with
    data and holes exactly."""
    img = mkfs(tmp_path, {"s.img": 6 << 20}, size="64M")
    srv = start(server, impl, "file", img, "ext2file=/s.img")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    chunk = data(70000, 9)
    for off in (0, 2 << 20, (6 << 20) - 70000):
        h.pwrite(chunk, off)
    h.shutdown()
    out = tmp_path / "copy"
    run(["nbdcopy", srv.uri, str(out)])
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", srv.uri,
         str(tmp_path / "convert")])
    want = bytearray(6 << 20)
    for off in (0, 2 << 20, (6 << 20) - 70000):
        want[off:off + 70000] = chunk
    assert out.read_bytes() == bytes(want)
    assert (tmp_path / "convert").read_bytes() == bytes(want)


# ------------------------------------------------------------ errors

def start_fails(impl, args, tmp_path):
    """Run a server command line that must exit at startup; return
    (status, stderr)."""
    server_impl, fargs = ext2_args(impl)
    p = subprocess.run([BINARIES[server_impl], "-f", "-U",
                        str(tmp_path / "never")] + fargs + args,
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=RUN_TIMEOUT)
    return p.returncode, p.stderr


@pytest.mark.parametrize("args, words", [
    ([], "you must supply ext2file=<FILE> parameter"),
    (["ext2file=disk.raw"], "absolute"),
    (["ext2file=/a", "ext2file=/b"], "specified more than once"),
])
@pytest.mark.parametrize("impl", IMPLS)
def test_parameter_errors_at_startup(impl, args, words, tmp_path):
    status, err = start_fails(impl, ["memory", "1M"] + args, tmp_path)
    assert status == 1
    assert words in err
    if impl != "nbdkit":
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "error: ext2: " in lines[0], err


@pytest.mark.parametrize("target, words", [
    ("/nope", "/nope: namei: File not found by ext2_lookup"),
    ("/adir", "/adir: must be a regular file in the disk image"),
    ("/", "/: must be a regular file in the disk image"),
    ("/link", "/link: must be a regular file in the disk image"),
])
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_path_refused_at_connection(server, impl, target, words,
                                        tmp_path):
    """The server starts; a client is refused, and it keeps serving."""
    img = mkfs(tmp_path, {"adir": None, "f": b"ok"})
    # A symbolic link, made in the image by debugfs.
    run(["debugfs", "-w", "-R", "symlink /link /f", img])
    srv = start(server, impl, "file", img, "ext2file=" + target)
    h = nbd.NBD()
    with pytest.raises(nbd.Error):
        h.connect_uri(srv.uri)
    assert srv.alive()
    err = srv.stderr_text()
    assert words in err
    if impl != "nbdkit":
        assert "error: ext2: " + target in err


@pytest.mark.parametrize("impl", IMPLS)
def test_not_ext2_refused_at_connection(server, impl, tmp_path):
    srv = start(server, impl, "memory", "1M", "ext2file=/f")
    h = nbd.NBD()
    with pytest.raises(nbd.Error):
        h.connect_uri(srv.uri)
    assert srv.alive()
    err = srv.stderr_text()
    assert "Bad magic number in super-block" in err
    if impl != "nbdkit":
        assert "--filter=partition" in err


@pytest.mark.parametrize("impl", IMPLS)
def test_read_only_feature(server, impl, tmp_path):
    """A filesystem with a read-only-compatible feature libext2fs does
    not know: refused for writing, served with -r."""
    img = mkfs(tmp_path, {"f": b"hi\n"})
    run(["debugfs", "-w", "-R", "ssv feature_ro_compat 0x40000000", img])
    srv = start(server, impl, "file", img, "ext2file=/f")
    with pytest.raises(nbd.Error):
        nbd.NBD().connect_uri(srv.uri)
    err = srv.stderr_text()
    assert "unsupported read-only feature" in err
    if impl != "nbdkit":
        assert "serve it with -r" in err
    srv = start(server, impl, "-r", "file", img, "ext2file=/f")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    assert h.pread(3, 0) == b"hi\n"
    h.shutdown()


@pytest.mark.parametrize("impl", IMPLS)
def test_truncated_image(server, impl, tmp_path):
    """Blocks past the end of the disk below: our filter fails the read
    with EIO and serves on; nbdkit 1.32 aborts (documented)."""
    disk = data(3 << 20, 10)
    img = mkfs(tmp_path, {"disk.raw": disk}, fstype="ext2", size="16M")
    srv = start(server, impl, "file", img, "truncate=2M",
                "ext2file=/disk.raw", filters=["truncate"])
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    e = errno_of(lambda: h.pread(1 << 20, 2 << 20))
    if impl == "nbdkit":
        assert e != 0
        assert srv.proc.wait(RUN_TIMEOUT) != 0
        assert "Assertion" in srv.stderr_text()
        return
    assert e == errno.EIO
    assert h.pread(4096, 0) == disk[:4096]
    h.shutdown()
    assert "is the image truncated?" in srv.stderr_text()


# ------------------------------------------------------------ threads

@pytest.mark.parametrize("impl", IMPLS)
def test_thread_model(impl, tmp_path):
    server_impl, fargs = ext2_args(impl)
    out = run([BINARIES[server_impl]] + fargs +
              ["memory", "1M", "ext2file=/f", "--dump-plugin"], text=True)
    assert "thread_model=serialize_connections" in out.splitlines()


@pytest.mark.parametrize("impl", IMPLS)
def test_second_client_waits(server, impl, tmp_path):
    """A second client is served once the first has gone, and sees the
    first one's writes."""
    img = mkfs(tmp_path, {"f": bytes(4096)})
    srv = start(server, impl, "file", img, "ext2file=/f")
    h1 = nbd.NBD()
    h1.connect_uri(srv.uri)
    h1.pwrite(b"first", 0)
    done = threading.Event()
    seen = []

    def second():
        h2 = nbd.NBD()
        h2.connect_uri(srv.uri)
        seen.append(bytes(h2.pread(5, 0)))
        h2.shutdown()
        done.set()

    t = threading.Thread(target=second)
    t.start()
    # While the first is connected the second cannot get in; whatever
    # the wait, it must not have read anything.
    assert not done.wait(0.5)
    h1.shutdown()
    t.join(RUN_TIMEOUT)
    assert seen == [b"first"]
