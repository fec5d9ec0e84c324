"""The dirty filter: changed-block tracking over any plugin, offered as
qemu:dirty-bitmap:NAME (nbdkit has no such thing; qemu-nbd only for
qcow2 images).  Driven by nbdinfo --map, qemu-img map with
x-dirty-bitmap and libnbd; checkpoints; the bitmap across a clean
restart and after a crash; and an incremental backup that reads only
the blocks that changed.
"""
import json
import os
import signal
import subprocess
import time

import nbd
import pytest

from conftest import NBDSRV, start_server
from nbdraw import wait_listening

KiB = 1024
MiB = 1024 * KiB
G = 64 * KiB                    # the granularity the tests use

ENV = dict(os.environ, PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))
CONTEXT = "qemu:dirty-bitmap:backup"


@pytest.fixture
def start(tmp_path):
    started = []

    def go(*args, plugin=("memory", "8M")):
        sock = str(tmp_path / ("s%d" % len(started)))
        srv = start_server("nbdsrv", ["--filter=dirty", *plugin,
                                      "dirty-bitmap=backup",
                                      "dirty-granularity=64K", *args], sock)
        wait_listening(sock)
        started.append(srv)
        return srv
    yield go
    for s in started:
        s.stop()


def dirty_map(srv):
    """[(offset, length, dirty)] from nbdinfo --map."""
    out = subprocess.run(["nbdinfo", "--json", "--map=" + CONTEXT, srv.uri],
                         stdout=subprocess.PIPE, check=True, env=ENV,
                         timeout=60, text=True).stdout
    return [(e["offset"], e["length"], e["type"] == 1)
            for e in json.loads(out)]


def dirty_ranges(srv):
    return [(o, n) for o, n, d in dirty_map(srv) if d]


def write(srv, offset, data):
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(data, offset)
    h.shutdown()


def test_offered_and_clean_at_start(start):
    srv = start()
    out = subprocess.run(["nbdinfo", "--json", srv.uri],
                         stdout=subprocess.PIPE, check=True, env=ENV,
                         timeout=60, text=True).stdout
    assert CONTEXT in json.loads(out)["exports"][0]["contexts"]
    assert dirty_map(srv) == [(0, 8 * MiB, False)]


def test_writes_trims_zeroes_are_tracked(start):
    """Every block a write, trim or zero touches is dirty, and only
    those, at the granularity."""
    srv = start()
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"x" * 100, G + 10)              # one block
    h.pwrite(b"y" * (G + 2), 4 * G - 1)       # three blocks
    h.trim(G, 10 * G)
    h.zero(512, 20 * G + 512)
    h.pread(4 * G, 30 * G)                    # reads change nothing
    h.shutdown()
    assert dirty_ranges(srv) == [(G, G), (3 * G, 3 * G), (10 * G, G),
                                 (20 * G, G)]


def test_qemu_img_map_sees_the_bitmap(start):
    """qemu-img reads the bitmap through x-dirty-bitmap (it reports dirty
    blocks as unallocated, "data": false)."""
    srv = start()
    write(srv, 2 * G, b"z" * G)
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", "--image-opts",
         "driver=nbd,server.type=unix,server.path=%s,x-dirty-bitmap=%s"
         % (srv.sock, CONTEXT)],
        stdout=subprocess.PIPE, check=True, env=ENV, timeout=60,
        text=True).stdout
    dirty = [(e["start"], e["length"]) for e in json.loads(out)
             if not e["data"]]
    assert dirty == [(2 * G, G)]


def test_checkpoint_starts_a_new_bitmap(start, tmp_path):
    cp = tmp_path / "checkpoint"
    srv = start("dirty-checkpoint=%s" % cp)
    write(srv, 0, b"a" * G)
    assert dirty_ranges(srv) == [(0, G)]
    cp.write_text("")
    for _ in range(600):                      # the filter removes it
        if not cp.exists():
            break
        time.sleep(0.01)
    assert not cp.exists(), "the checkpoint was not taken"
    assert dirty_ranges(srv) == []
    write(srv, 5 * G, b"b" * G)
    assert dirty_ranges(srv) == [(5 * G, G)]


def test_bitmap_survives_a_clean_restart(start, tmp_path):
    """Saved at a clean shutdown, loaded at the next start (over a file
    plugin, so the data survives too)."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(8 * MiB))
    state = tmp_path / "bitmap"
    plugin = ("file", str(disk))
    srv = start("dirty-file=%s" % state, plugin=plugin)
    write(srv, 7 * G, b"c" * 10)
    assert srv.stop() == 0
    assert state.exists()
    srv = start("dirty-file=%s" % state, plugin=plugin)
    assert dirty_ranges(srv) == [(7 * G, G)]
    assert "not saved" not in srv.stderr_text()


def test_crash_marks_everything_dirty(start, tmp_path):
    """After a crash the bitmap is unknown: the next start says so in one
    line and marks every block dirty, so a backup copies everything."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(8 * MiB))
    state = tmp_path / "bitmap"
    plugin = ("file", str(disk))
    srv = start("dirty-file=%s" % state, plugin=plugin)
    write(srv, 0, b"d" * 10)
    srv.stop(sig=signal.SIGKILL)
    srv = start("dirty-file=%s" % state, plugin=plugin)
    assert dirty_map(srv) == [(0, 8 * MiB, True)]
    err = srv.stderr_text()
    assert "was not saved at a clean shutdown" in err
    assert len([l for l in err.splitlines() if "dirty" in l]) == 1


def test_bad_state_file_refused(tmp_path):
    state = tmp_path / "bitmap"
    state.write_bytes(b"not a bitmap at all")
    proc = subprocess.run(
        [NBDSRV, "-U", str(tmp_path / "s"), "-f", "--filter=dirty",
         "memory", "1M", "dirty-file=%s" % state],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 1
    assert "is not a bitmap saved by the dirty filter" in proc.stderr


def test_incremental_backup_reads_only_changes(start, tmp_path):
    """A full backup, then changes, then an incremental backup that reads
    only the dirty blocks and ends with the same disk."""
    cp = tmp_path / "checkpoint"
    srv = start("dirty-checkpoint=%s" % cp, plugin=("memory", "8M"))
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    for i in range(0, 8 * MiB, 256 * KiB):
        h.pwrite(os.urandom(4096), i)
    backup = bytearray(h.pread(8 * MiB, 0))           # full backup
    cp.write_text("")
    for _ in range(600):
        if not cp.exists():
            break
        time.sleep(0.01)
    assert not cp.exists()
    for off in (100, 3 * MiB + 7, 6 * MiB):           # changes
        h.pwrite(b"\xee" * 5000, off)
    read = 0
    for off, n in dirty_ranges(srv):                   # incremental
        backup[off:off + n] = h.pread(n, off)
        read += n
    assert bytes(backup) == h.pread(8 * MiB, 0)
    assert read == 3 * G, "read %d bytes, not only the changed blocks" % read
    h.shutdown()
