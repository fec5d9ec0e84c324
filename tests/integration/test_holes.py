"""Holes on read (R-18 beyond): a structured READ answers the whole
4 KiB blocks of its data that are zero bytes with OFFSET_HOLE chunks, so
a sparse disk moves fewer bytes; with DF, or without structured replies,
or for small reads, the reply is as before.  Real clients (libnbd,
qemu-img) read the same data either way.
"""
import hashlib
import os
import subprocess

import pytest

from conftest import start_server
from nbdraw import (
    Client, CMD_READ, CMD_WRITE, CMD_FLAG_DF, CMD_FLAG_PAYLOAD_LEN,
    REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REPLY_FLAG_DONE,
    wait_listening,
)
from util import connect

KiB = 1024
MiB = 1024 * KiB

ENV = dict(os.environ, PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))


@pytest.fixture
def srv(tmp_path):
    sock = str(tmp_path / "sock")
    s = start_server("nbdsrv", ["memory", "64M"], sock)
    wait_listening(sock)
    yield s
    s.stop()


def write(c, offset, data):
    flags = CMD_FLAG_PAYLOAD_LEN if c.extended else 0
    r = c.request(CMD_WRITE, flags, offset=offset, length=len(data),
                  payload=data)
    assert r.error == 0, r


@pytest.mark.parametrize("extended", [False, True],
                         ids=["structured", "extended"])
def test_read_with_holes(srv, extended):
    """Data where it was written, holes elsewhere, DONE on the last
    chunk, and the assembled data right."""
    with Client(srv.sock) as c:
        c.handshake(structured=not extended, extended=extended)
        write(c, 64 * KiB, b"a" * 8192)
        write(c, 512 * KiB, b"b" * 4096)
        r = c.request(CMD_READ, offset=0, length=MiB)
        assert r.error == 0
        want = bytearray(MiB)
        want[64 * KiB:72 * KiB] = b"a" * 8192
        want[512 * KiB:516 * KiB] = b"b" * 4096
        assert r.data == want
        # Whole 4 KiB blocks of zero bytes go out as holes.
        kinds = [(x.type, x.offset, len(x.data)) for x in r.chunks]
        assert kinds == [
            (REPLY_TYPE_OFFSET_HOLE, 0, 64 * KiB),
            (REPLY_TYPE_OFFSET_DATA, 64 * KiB, 8 * KiB),
            (REPLY_TYPE_OFFSET_HOLE, 72 * KiB, 440 * KiB),
            (REPLY_TYPE_OFFSET_DATA, 512 * KiB, 4 * KiB),
            (REPLY_TYPE_OFFSET_HOLE, 516 * KiB, MiB - 516 * KiB),
        ]
        assert [x.flags for x in r.chunks] == [0] * 4 + [REPLY_FLAG_DONE]
        wire = sum(len(x.payload) for x in r.chunks)
        assert wire < 16 * KiB, "a sparse MiB costs %d bytes" % wire


def test_df_keeps_one_data_chunk(srv):
    """DF: the client wants the data in one chunk, zeroes included."""
    with Client(srv.sock) as c:
        c.handshake(structured=True)
        write(c, 0, b"c" * 4096)
        r = c.request(CMD_READ, CMD_FLAG_DF, offset=0, length=MiB)
        assert [x.type for x in r.chunks] == [REPLY_TYPE_OFFSET_DATA]
        assert r.data == b"c" * 4096 + bytes(MiB - 4096)


def test_zeroes_written_are_holes_too(srv):
    """The data decides, not block status: zeroes written as data go out
    as a hole as well."""
    with Client(srv.sock) as c:
        c.handshake(structured=True)
        write(c, 0, b"d" * 4096 + bytes(60 * KiB) + b"e" * 4096)
        r = c.request(CMD_READ, offset=0, length=68 * KiB)
        assert [(x.type, len(x.data)) for x in r.chunks] == [
            (REPLY_TYPE_OFFSET_DATA, 4 * KiB),
            (REPLY_TYPE_OFFSET_HOLE, 60 * KiB),
            (REPLY_TYPE_OFFSET_DATA, 4 * KiB)]


def test_small_read_is_one_chunk(srv):
    """Below 64 KiB the extra block status call is not worth it."""
    with Client(srv.sock) as c:
        c.handshake(structured=True)
        r = c.request(CMD_READ, offset=0, length=32 * KiB)
        assert [x.type for x in r.chunks] == [REPLY_TYPE_OFFSET_DATA]


def test_simple_replies_unchanged(srv):
    """Without structured replies a READ is a simple reply with all the
    bytes, as before."""
    with Client(srv.sock) as c:
        c.handshake()
        r = c.request(CMD_READ, offset=0, length=MiB)
        assert r.simple and r.data == bytes(MiB)


def test_clients_read_the_same(srv, tmp_path):
    """libnbd and qemu-img read a sparse disk the same through hole
    replies as the data written: the image converted out compares equal
    to the source."""
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.truncate(64 * MiB)
        for i in range(0, 64, 7):
            f.seek(i * MiB + 1000)
            f.write(os.urandom(70000))
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw",
                    str(src), srv.uri], check=True, env=ENV, timeout=300)
    out = tmp_path / "out.img"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw",
                    srv.uri, str(out)], check=True, env=ENV, timeout=300)
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw",
                    str(src), str(out)], check=True, env=ENV, timeout=300)
    h = connect(srv)
    digest = hashlib.sha256()
    for off in range(0, 64 * MiB, 4 * MiB):
        digest.update(h.pread(4 * MiB, off))
    h.shutdown()
    assert digest.hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
