"""Real NBD clients (nbdinfo, qemu-img, qemu-io, nbdcopy, nbdsh, fio)
against the bundled plugins, each run against nbdsrv and Debian's nbdkit
through the `impl` fixture: the two must behave the same.
"""
import json
import os
import random
import subprocess

import nbd
import pytest

from util import accepting

# nbdsh and nbdkit's --run find python3 through PATH; only Debian's
# python3 has libnbd's `nbd` module, so put /usr/bin first.
ENV = dict(os.environ,
           PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))

# Hang protection for one client command, not a speed requirement.
CMD_TIMEOUT = 600

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@pytest.fixture
def server(server):
    """conftest's server factory, returning only once the server
    accepts connections."""
    return accepting(server)


def run(cmd, check=True, cwd=None):
    """Run CMD, returning the CompletedProcess with text output.  With
    CHECK, fail the test (showing both streams) on non-zero status."""
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=ENV, cwd=cwd, timeout=CMD_TIMEOUT,
                          text=True, errors="replace")
    if check and proc.returncode != 0:
        pytest.fail("%s exited with status %d\nstdout:\n%s\nstderr:\n%s"
                    % (cmd, proc.returncode, proc.stdout, proc.stderr))
    return proc


def qemu_io(uri, *commands, check=True, discard=False):
    """Run qemu-io on URI with each string in COMMANDS as one -c."""
    cmd = ["qemu-io", "-f", "raw"]
    if discard:
        cmd += ["-d", "unmap"]
    for c in commands:
        cmd += ["-c", c]
    cmd.append(uri)
    proc = run(cmd, check=check)
    # qemu-io reports a failed -P check on stdout; never let one pass.
    if check:
        assert "Pattern verification failed" not in proc.stdout, proc.stdout
    return proc


def connect(uri):
    """Open a libnbd handle on URI."""
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def extents(uri):
    """The base:allocation map of URI as a list of (offset, length, type)."""
    proc = run(["nbdinfo", "--map", "--json", uri])
    out = [(e["offset"], e["length"], e["type"])
           for e in json.loads(proc.stdout)]
    pos = 0
    for off, length, _ in out:
        assert off == pos, "map is not contiguous: %r" % out
        pos += length
    return out


def types_in(ext, start, end):
    """The set of extent types overlapping [START, END)."""
    return {t for off, length, t in ext
            if off < end and off + length > start}


def random_file(path, size, seed):
    data = random.Random(seed).randbytes(size)
    with open(path, "wb") as f:
        f.write(data)
    return data


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------- nbdinfo

def test_nbdinfo(server, impl):
    s = server("memory", "size=1G", impl=impl)
    proc = run(["nbdinfo", s.uri])
    assert "export-size: %d" % GiB in proc.stdout
    assert "is_read_only: false" in proc.stdout
    info = json.loads(run(["nbdinfo", "--json", s.uri]).stdout)
    export = info["exports"][0]
    assert export["export-size"] == GiB
    assert export["is_read_only"] is False
    for flag in ("can_flush", "can_trim", "can_zero", "can_fua"):
        assert export[flag] is True, flag


def test_nbdinfo_size(server, impl):
    s = server("memory", "size=1G", impl=impl)
    assert run(["nbdinfo", "--size", s.uri]).stdout.strip() == str(GiB)


def test_nbdinfo_list(server, impl):
    s = server("memory", "size=1G", impl=impl)
    proc = run(["nbdinfo", "--list", s.uri])
    assert 'export="":' in proc.stdout
    info = json.loads(run(["nbdinfo", "--list", "--json", s.uri]).stdout)
    names = [e["export-name"] for e in info["exports"]]
    assert names == [""]
    assert info["exports"][0]["export-size"] == GiB


def test_nbdinfo_is_can(server, impl):
    """nbdinfo --is/--can exit with 0 for true and 2 for false."""
    s = server("memory", "size=1M", impl=impl)
    assert run(["nbdinfo", "--is", "read-only", s.uri],
               check=False).returncode == 2
    for cap in ("connect", "write", "flush", "trim", "zero", "fua",
                "multi-conn", "cache", "fast-zero", "df"):
        proc = run(["nbdinfo", "--can", cap, s.uri], check=False)
        assert proc.returncode == 0, (cap, proc.stderr)


def test_nbdinfo_map_totals(server, impl):
    s = server("memory", "size=4M", impl=impl)
    qemu_io(s.uri, "write -P 1 0 1M")
    proc = run(["nbdinfo", "--map", "--totals", "--json", s.uri])
    totals = {t["type"]: t["size"] for t in json.loads(proc.stdout)}
    assert totals == {0: MiB, 3: 3 * MiB}, totals


def test_nbdinfo_map(server, impl):
    s = server("memory", "size=64M", impl=impl)
    before = extents(s.uri)
    assert types_in(before, 0, 64 * MiB) == {3}, before
    qemu_io(s.uri, "write -P 0xab 0 1M", "write -P 0xcd 8M 64k")
    ext = extents(s.uri)
    assert sum(length for _, length, _ in ext) == 64 * MiB
    # Written ranges are data (not hole, not zero) ...
    assert types_in(ext, 0, 1 * MiB) == {0}, ext
    assert types_in(ext, 8 * MiB, 8 * MiB + 64 * KiB) == {0}, ext
    # ... and ranges well away from them are still hole+zero.
    assert types_in(ext, 2 * MiB, 7 * MiB) == {3}, ext
    assert types_in(ext, 10 * MiB, 64 * MiB) == {3}, ext
    # The plain (non-JSON) output names the types too.
    proc = run(["nbdinfo", "--map", s.uri])
    assert "data" in proc.stdout and "hole,zero" in proc.stdout


# ---------------------------------------------------------------- qemu-img

def test_qemu_img_info(server, impl):
    s = server("memory", "size=1G", impl=impl)
    info = json.loads(run(["qemu-img", "info", "--output=json",
                           s.uri]).stdout)
    assert info["virtual-size"] == GiB
    assert info["format"] == "raw"


def test_qemu_img_convert_roundtrip(server, impl, tmp_path):
    size = 64 * MiB
    src = tmp_path / "src.img"
    out = tmp_path / "out.img"
    data = random_file(src, size, seed=1)
    s = server("memory", "size=64M", impl=impl)
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw",
         str(src), s.uri])
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), s.uri])
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri, str(out)])
    assert file_bytes(out) == data
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src),
         str(out)])
    # Again with 16 coroutines and out-of-order writes: many requests
    # in flight on one connection.
    data2 = random_file(src, size, seed=3)
    run(["qemu-img", "convert", "-n", "-W", "-m", "16", "-f", "raw",
         "-O", "raw", str(src), s.uri])
    out.unlink()
    run(["qemu-img", "convert", "-m", "16", "-f", "raw", "-O", "raw",
         s.uri, str(out)])
    assert file_bytes(out) == data2
    # qemu-img compare must notice a difference, or the checks above
    # prove nothing.
    qemu_io(s.uri, "write -P 0x5a 32M 4k")
    proc = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src),
                s.uri], check=False)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)


# ---------------------------------------------------------------- qemu-io

def test_qemu_io_patterns(server, impl):
    s = server("memory", "size=64M", impl=impl)
    qemu_io(s.uri,
            "write -P 0xa5 0 1M",
            "write -P 0x5a 1M 64k",
            "write -P 0x3c 4095 3",          # unaligned, crosses 4k
            "read -P 0xa5 0 4095",
            "read -P 0x3c 4095 3",
            "read -P 0xa5 4098 1044478",
            "read -P 0x5a 1M 64k",
            "read -P 0 2M 1M",               # never written
            "write -P 0x11 63M 1M",          # last MiB of the disk
            "read -P 0x11 63M 1M")
    # A second connection sees what the first one wrote.
    qemu_io(s.uri, "read -P 0x5a 1M 64k", "read -P 0x11 63M 1M")


def test_qemu_io_detects_mismatch(server, impl):
    """Sanity check of the tool: a wrong -P pattern must fail."""
    s = server("memory", "size=1M", impl=impl)
    qemu_io(s.uri, "write -P 0x22 0 4k")
    proc = qemu_io(s.uri, "read -P 0x23 0 4k", check=False)
    assert "Pattern verification failed" in proc.stdout, proc.stdout


def test_qemu_io_write_zeroes(server, impl):
    s = server("memory", "size=64M", impl=impl)
    qemu_io(s.uri,
            "write -P 0x77 0 1M",
            "write -z 256k 256k",
            "read -P 0x77 0 256k",
            "read -P 0 256k 256k",
            "read -P 0x77 512k 512k",
            "write -P 0x77 2M 1M",
            "write -z -u 2M 1M",             # zero, unmap allowed
            "read -P 0 2M 1M",
            "write -z 4097 100",             # unaligned
            "read -P 0x77 4096 1",
            "read -P 0 4097 100",
            "read -P 0x77 4197 1")


def test_qemu_io_discard(server, impl):
    s = server("memory", "size=64M", impl=impl)
    qemu_io(s.uri,
            "write -P 0x33 0 2M",
            "discard 0 1M",
            "read -P 0 0 1M",
            "read -P 0x33 1M 1M",
            discard=True)
    # The memory plugin frees trimmed pages: the range becomes a hole.
    ext = extents(s.uri)
    assert types_in(ext, 0, 1 * MiB) == {3}, ext
    assert types_in(ext, 1 * MiB, 2 * MiB) == {0}, ext


# ---------------------------------------------------------------- nbdcopy

def test_nbdcopy(server, impl, tmp_path):
    size = 64 * MiB
    src = tmp_path / "src.img"
    out = tmp_path / "out.img"
    data = random_file(src, size, seed=2)
    s = server("memory", "size=64M", impl=impl)
    run(["nbdcopy", str(src), s.uri])
    run(["nbdcopy", s.uri, str(out)])
    assert file_bytes(out) == data
    run(["nbdcopy", s.uri, "null:"])
    # Several connections and requests at once, then a plain copy back.
    run(["nbdcopy", "--connections=4", "--requests=16", str(src), s.uri])
    out.unlink()
    run(["nbdcopy", "--connections=4", s.uri, str(out)])
    assert file_bytes(out) == data


def test_nbdcopy_sparse(server, impl, tmp_path):
    """Copying a mostly-zero image keeps holes readable as zeroes."""
    s = server("memory", "size=16M", impl=impl)
    qemu_io(s.uri, "write -P 0x42 5M 128k")
    out = tmp_path / "out.img"
    run(["nbdcopy", s.uri, str(out)])
    data = file_bytes(out)
    assert len(data) == 16 * MiB
    assert data[5 * MiB:5 * MiB + 128 * KiB] == b"\x42" * (128 * KiB)
    assert data[:5 * MiB].count(0) == 5 * MiB
    assert data[5 * MiB + 128 * KiB:].count(0) == 11 * MiB - 128 * KiB


# ---------------------------------------------------------------- nbdsh

NBDSH_SCRIPT = r"""
import errno
size = h.get_size()
assert size == 16 * 1024 * 1024, size
assert not h.is_read_only()
assert h.can_flush() and h.can_trim() and h.can_zero() and h.can_fua()
buf = bytes(range(256)) * 16
h.pwrite(buf, 0)
assert h.pread(len(buf), 0) == buf
h.pwrite(b"\xee" * 512, 8192, nbd.CMD_FLAG_FUA)
assert h.pread(512, 8192) == b"\xee" * 512
h.flush()
h.zero(1024, 1024)
assert h.pread(4096, 0) == buf[:1024] + bytes(1024) + buf[2048:]
h.trim(4096, 8192)
assert h.pread(512, 8192) == bytes(512)
h.cache(4096, 0)
# Past the end of the disk: the server answers EINVAL.
h.set_strict_mode(0)
try:
    h.pread(512, size)
    raise AssertionError("read past the end succeeded")
except nbd.Error as ex:
    assert ex.errnum == errno.EINVAL, ex
print("nbdsh-ok")
"""


def test_nbdsh(server, impl):
    s = server("memory", "size=16M", impl=impl)
    proc = run(["nbdsh", "-u", s.uri, "-c", NBDSH_SCRIPT])
    assert proc.stdout.strip() == "nbdsh-ok"


def test_nbdsh_failure_is_visible(server, impl):
    """Sanity check: a failing nbdsh -c assertion gives non-zero status."""
    s = server("memory", "size=1M", impl=impl)
    proc = run(["nbdsh", "-u", s.uri, "-c", "assert h.get_size() == 5"],
               check=False)
    assert proc.returncode != 0


# ---------------------------------------------------------------- fio

def test_fio_verify(server, impl, tmp_path):
    s = server("memory", "size=64M", impl=impl)
    proc = run(["fio", "--name=verify", "--ioengine=nbd", "--uri=" + s.uri,
                "--rw=randwrite", "--verify=crc32c", "--size=32M",
                "--bs=4k", "--iodepth=8", "--numjobs=1",
                "--runtime=300", "--verify_state_save=0",
                "--output-format=json"],
               check=False, cwd=str(tmp_path))
    assert proc.returncode == 0, (
        "fio exited with status %d\nstdout:\n%s\nstderr:\n%s"
        % (proc.returncode, proc.stdout, proc.stderr))
    text = proc.stdout
    # The nbd engine prints "fio: connected to NBD server" before the JSON.
    result = json.loads(text[text.index("{"):])
    job = result["jobs"][0]
    assert job["error"] == 0, job
    written = job["write"]["io_bytes"]
    assert written > 0
    # Every block written was read back and checked.
    assert job["read"]["io_bytes"] == written, (job["read"], job["write"])
    for word in ("verify failed", "bad magic", "bad header"):
        assert word not in proc.stderr, proc.stderr


# ---------------------------------------------------------------- plugins

def test_null_plugin(server, impl):
    s = server("null", "size=1M", impl=impl)
    assert run(["nbdinfo", "--size", s.uri]).stdout.strip() == str(MiB)
    # Writes succeed and vanish; reads always return zeroes.
    qemu_io(s.uri, "write -P 0x55 0 64k", "read -P 0 0 64k",
            "write -z 0 64k", "read -P 0 1020k 4k")
    h = connect(s.uri)
    try:
        assert h.pread(MiB, 0) == bytes(MiB)
    finally:
        h.shutdown()


def test_null_plugin_default_size(server, impl):
    s = server("null", impl=impl)
    assert run(["nbdinfo", "--size", s.uri]).stdout.strip() == "0"


def test_zero_plugin(server, impl):
    """The deprecated zero plugin: an empty, read-only disk."""
    s = server("zero", impl=impl)
    info = json.loads(run(["nbdinfo", "--json", s.uri]).stdout)
    export = info["exports"][0]
    assert export["export-size"] == 0
    assert export["is_read_only"] is True


def test_full_plugin(server, impl):
    s = server("full", "size=1M", impl=impl)
    assert run(["nbdinfo", "--size", s.uri]).stdout.strip() == str(MiB)
    # Reads succeed and return zeroes.
    qemu_io(s.uri, "read -P 0 0 1M")
    # Every write fails with ENOSPC.
    for cmd in ("write -P 1 0 512", "write -P 1 512k 64k", "write -z 0 4k"):
        proc = qemu_io(s.uri, cmd, check=False)
        assert proc.returncode != 0, (cmd, proc.stdout)
        text = proc.stdout + proc.stderr
        assert "No space left on device" in text, (cmd, text)


def test_full_plugin_errno(server, impl):
    import errno
    s = server("full", "size=1M", impl=impl)
    h = connect(s.uri)
    try:
        for op in (lambda: h.pwrite(b"x" * 4096, 0),
                   lambda: h.zero(4096, 0),
                   lambda: h.trim(4096, 0)):
            with pytest.raises(nbd.Error) as exc:
                op()
            assert exc.value.errnum == errno.ENOSPC, exc.value
        assert h.pread(4096, 0) == bytes(4096)
    finally:
        h.shutdown()


def pattern_bytes(offset, count):
    """The pattern plugin's content: each 8-byte aligned word holds its
    own offset, big-endian."""
    first = offset // 8 * 8
    last = (offset + count + 7) // 8 * 8
    words = b"".join(o.to_bytes(8, "big") for o in range(first, last, 8))
    return words[offset - first:offset - first + count]


def test_pattern_plugin(server, impl):
    size = 1 * MiB
    s = server("pattern", "size=1M", impl=impl)
    assert run(["nbdinfo", "--size", s.uri]).stdout.strip() == str(size)
    h = connect(s.uri)
    try:
        assert h.pread(size, 0) == pattern_bytes(0, size)
        for offset, count in ((0, 8), (8, 16), (3, 5), (1000003, 77),
                              (size - 8, 8), (size - 3, 3),
                              (512 * KiB - 5, 4096)):
            assert h.pread(count, offset) == pattern_bytes(offset, count), \
                (offset, count)
    finally:
        h.shutdown()
    # A fixed spot, spelled out, guards against a wrong pattern_bytes().
    assert pattern_bytes(0x100, 8) == b"\0\0\0\0\0\0\x01\0"


def test_pattern_plugin_large(server, impl):
    """Offsets above 4 GiB use the high-order bytes of the pattern."""
    s = server("pattern", "size=8G", impl=impl)
    h = connect(s.uri)
    try:
        for offset in (4 * GiB - 4, 5 * GiB + 3, 8 * GiB - 4096):
            assert h.pread(4096, offset) == pattern_bytes(offset, 4096), \
                offset
    finally:
        h.shutdown()
