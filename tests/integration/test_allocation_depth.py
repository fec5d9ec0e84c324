"""qemu:allocation-depth (beyond nbdkit): which layer holds each block.
A cow or cache filter's own blocks are depth 1, the plugin's data below
depth 2, and blocks nothing holds 0.  qemu-img map over nbdsrv's cow
overlay shows what it shows over qemu-nbd serving a qcow2 overlay with
the same contents (qemu-nbd -A), and the depths name the same layers,
except that qemu calls the holes of a raw backing file depth 2 where
nbdsrv says 0: nothing holds them.
"""
import json
import os
import subprocess
import time

import pytest

from util import accepting
from nbdraw import wait_listening

KiB = 1024
ENV = dict(os.environ, PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))
DEPTH = "qemu:allocation-depth"


def run(*cmd):
    return subprocess.run(cmd, stdout=subprocess.PIPE, check=True, env=ENV,
                          timeout=120, text=True).stdout


@pytest.fixture
def base(tmp_path):
    """4 MiB raw file with data in its first 64 KiB and at 1 MiB."""
    path = tmp_path / "base.raw"
    with open(path, "wb") as f:
        f.truncate(4 << 20)
        f.write(b"x" * 65536)
        f.seek(1 << 20)
        f.write(b"y" * 65536)
    return str(path)


@pytest.fixture
def start(server):
    """conftest's nbdsrv factory, returning once the server accepts;
    every server is stopped at teardown."""
    return accepting(server)


def depth_map(uri):
    return [(e["offset"], e["length"], e["type"])
            for e in json.loads(run("nbdinfo", "--json", "--map=" + DEPTH,
                                    uri))]


@pytest.mark.parametrize("filt", ["cow", "cache"])
def test_depths_through_an_overlay(start, base, filt):
    srv = start("--filter=" + filt, "file", base)
    run("qemu-io", "-f", "raw", "-c", "write -P 0x33 512k 64k", srv.uri)
    assert depth_map(srv.uri) == [
        (0, 65536, 2), (65536, 458752, 0), (524288, 65536, 1),
        (589824, 458752, 0), (1 << 20, 65536, 2),
        (1114112, (4 << 20) - 1114112, 0)]


def test_offered_only_with_an_overlay(start, base):
    plain = start("file", base)
    ctx = json.loads(run("nbdinfo", "--json", plain.uri))["exports"][0]
    assert ctx["contexts"] == ["base:allocation"]
    cow = start("--filter=cow", "file", base)
    ctx = json.loads(run("nbdinfo", "--json", cow.uri))["exports"][0]
    assert ctx["contexts"] == ["base:allocation", DEPTH]


def test_qemu_img_map_as_over_qemu_nbd(start, base, tmp_path):
    ours = start("--filter=cow", "file", base)
    run("qemu-io", "-f", "raw", "-c", "write -P 0x33 512k 64k", ours.uri)
    overlay = tmp_path / "ov.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw",
        str(overlay))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 512k 64k",
        str(overlay))
    sock = str(tmp_path / "q.sock")
    qemu = subprocess.Popen(["qemu-nbd", "-t", "-A", "-f", "qcow2", "-k",
                             sock, str(overlay)], env=ENV,
                            stdin=subprocess.DEVNULL)
    try:
        for _ in range(3000):            # qemu-nbd creates it first
            if os.path.exists(sock):
                break
            time.sleep(0.01)
        wait_listening(sock)
        theirs_uri = "nbd+unix:///?socket=" + sock
        assert run("qemu-img", "map", "--output=json", ours.uri) == \
            run("qemu-img", "map", "--output=json", theirs_uri)
        # The same layers: local where qemu says local, backing where it
        # says backing (qemu counts raw holes as backing too).
        def per_block(entries):
            return [t for o, n, t in entries for _ in range(n // 65536)]
        ours_b = per_block(depth_map(ours.uri))
        theirs_b = per_block(depth_map(theirs_uri))
        assert len(ours_b) == len(theirs_b) == 64
        assert all(t == o for o, t in zip(ours_b, theirs_b) if o), \
            (ours_b, theirs_b)
    finally:
        qemu.terminate()
        qemu.wait(30)
