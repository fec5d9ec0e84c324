"""Reply shapes (protocol-rules.md §5, §2.2, §2.4): simple versus
structured replies (R-16), ERROR chunks (R-17), OFFSET_DATA (R-18, R-19),
block status (R-20..R-23, with the pins of §5.4), serialisation of
parallel replies (R-24, R-27).

Where a rule is "beyond: our target" nbdsrv may send more than nbdkit
(a message in ERROR chunks, structured errors for every command,
OFFSET_HOLE chunks); the shared assertions accept both forms and the
stricter nbdsrv-only checks are in tests named *_nbdsrv.
"""
import random
import struct

import pytest

import nbdraw as n
from conftest import start_server
from util import SH_PLUGIN, write_script

nbd = pytest.importorskip("nbd")

SIZE = 1024 * 1024
MEMORY = ("memory", "size=1M")

# pread fails with EIO, everything else works: a plugin-level READ
# error (as opposed to a validation error).
SH_READ_EIO = r"""#!/bin/sh
case "$1" in
  get_size) echo 1048576 ;;
  can_write) exit 0 ;;
  can_flush|can_trim|can_zero|can_fast_zero|can_extents) exit 3 ;;
  can_fua|can_cache) echo none ;;
  pread) echo "EIO test plugin refuses to read" >&2; exit 1 ;;
  pwrite) echo "ENOSPC test plugin refuses to write" >&2; exit 1 ;;
  *) exit 2 ;;
esac
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    cache = n.ServerCache(start_server, tmp_path_factory.mktemp("srv"))
    yield cache
    cache.stop_all()


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    return (SH_PLUGIN, write_script(tmp_path_factory.mktemp("sh"),
                                    "readeio.sh", SH_READ_EIO))


@pytest.fixture
def fresh(server, impl):
    """A new 1 MiB memory server for tests that depend on its content."""
    def start(*args):
        s = server(*(args or MEMORY), impl=impl)
        n.wait_listening(s.sock)
        return s
    return start


def is_error_reply(r, want):
    """True if R is an error reply with error WANT in either allowed
    form: simple, or a single ERROR chunk with DONE (R-17 beyond)."""
    if r.simple:
        return r.error == want
    return (len(r.chunks) == 1 and r.chunks[0].type == n.REPLY_TYPE_ERROR
            and r.chunks[0].done and r.chunks[0].error == want)


def assert_read_chunks(r, offset, length, data=None):
    """A successful structured READ: data/hole chunks that tile the
    request exactly (R-18; one OFFSET_DATA in nbdkit, hole chunks and
    splitting allowed beyond), DONE on the last chunk only, an optional
    NONE chunk only last."""
    assert not r.simple, "R-16: simple reply to a READ under SR"
    assert r.error == 0
    assert r.chunks[-1].done
    assert not any(c.done for c in r.chunks[:-1])
    spans = []
    for i, c in enumerate(r.chunks):
        if c.type == n.REPLY_TYPE_NONE:
            assert i == len(r.chunks) - 1 and c.payload == b""
            continue
        assert c.type in (n.REPLY_TYPE_OFFSET_DATA, n.REPLY_TYPE_OFFSET_HOLE)
        spans.append((c.offset, len(c.data)))
    spans.sort()
    pos = offset
    for off, ln in spans:
        assert off == pos and ln > 0, "chunks do not tile: %r" % spans
        pos += ln
    assert pos == offset + length, "chunks do not tile: %r" % spans
    if data is not None:
        assert r.data == data


# --- §5.1 shapes ----------------------------------------------------------------

def test_simple_read_shape(servers, impl):
    """§2.2: without SR a READ gets a 16-byte simple header and exactly
    `length` data bytes; an error gets the header only."""
    s = servers.get(impl, *MEMORY)
    with n.Client(s.sock) as c:
        c.handshake()
        cookie = c.send_request(n.CMD_READ, offset=512, length=100)
        assert c.recv_exact(16) == struct.pack(">IIQ", n.SIMPLE_REPLY_MAGIC,
                                               0, cookie)
        assert c.recv_exact(100) == bytes(100)
        bad = c.send_request(n.CMD_READ, offset=SIZE, length=100)
        good = c.send_request(n.CMD_FLUSH)
        # Both replies are headers only; in any order.
        raw = c.recv_exact(32)
        heads = sorted([struct.unpack(">IIQ", raw[:16]),
                        struct.unpack(">IIQ", raw[16:])], key=lambda x: x[2])
        assert heads == sorted([(n.SIMPLE_REPLY_MAGIC, n.EINVAL, bad),
                                (n.SIMPLE_REPLY_MAGIC, 0, good)],
                               key=lambda x: x[2])


def test_structured_read_df_shape(servers, impl):
    """R-18/R-19: with DF a READ answers one OFFSET_DATA chunk with DONE,
    length = count + 8, offset = request offset, then the data — byte
    for byte (also for never-written zeroes: no OFFSET_HOLE with DF)."""
    s = servers.get(impl, *MEMORY)
    with n.Client(s.sock) as c:
        c.handshake(structured=True)
        for offset, length in ((4096, 1), (8192, 65536), (0, SIZE)):
            cookie = c.send_request(n.CMD_READ, n.CMD_FLAG_DF, offset=offset,
                                    length=length)
            hdr = c.recv_exact(20)
            assert hdr == struct.pack(">IHHQI", n.STRUCTURED_REPLY_MAGIC,
                                      n.REPLY_FLAG_DONE,
                                      n.REPLY_TYPE_OFFSET_DATA, cookie,
                                      length + 8)
            assert c.recv_exact(8) == struct.pack(">Q", offset)
            assert c.recv_exact(length) == bytes(length)
            del c.pending[cookie]


def test_structured_read_written_data(fresh):
    """R-18: a structured READ of written data returns that data in
    chunks that tile the request."""
    s = fresh()
    with n.Client(s.sock) as c:
        c.handshake(structured=True)
        blob = bytes(random.Random(7).getrandbits(8) for _ in range(8192))
        assert c.request(n.CMD_WRITE, 0, 61440, 8192, blob).error == 0
        r = c.request(n.CMD_READ, 0, 61440, 8192)
        assert_read_chunks(r, 61440, 8192, blob)
        r = c.request(n.CMD_READ, 0, 0, 131072)
        assert_read_chunks(r, 0, 131072)
        assert r.data[61440:69632] == blob
        assert r.data[:61440] == bytes(61440)


@pytest.mark.parametrize("flags,offset,length,want", [
    (0, SIZE, 512, n.EINVAL),                  # V-2
    (0, 0, 0, n.EINVAL),                       # zero length
    (0x40, 0, 512, n.EINVAL),                  # V-5
    (n.CMD_FLAG_REQ_ONE, 0, 512, n.EINVAL),    # V-10
    (0, 0, n.MAX_REQUEST_SIZE + 1, n.EINVAL),  # V-2 before V-12
])
def test_structured_read_validation_error_is_chunk(servers, impl, flags,
                                                   offset, length, want):
    """R-16/R-17: with SR even an early validation error of a READ is
    one ERROR chunk with DONE, never a simple reply."""
    s = servers.get(impl, *MEMORY)
    with n.Client(s.sock) as c:
        c.handshake(structured=True)
        r = c.request(n.CMD_READ, flags, offset, length)
        assert not r.simple
        assert len(r.chunks) == 1
        ch = r.chunks[0]
        assert ch.type == n.REPLY_TYPE_ERROR and ch.done
        assert ch.error == want
        assert len(ch.payload) == 6 + len(ch.message)


def test_structured_read_plugin_error_is_chunk(servers, failing, impl):
    """R-16: a plugin failure on READ under SR → ERROR chunk (EIO)."""
    s = servers.get(impl, *failing)
    with n.Client(s.sock) as c:
        c.handshake(structured=True)
        r = c.request(n.CMD_READ, 0, 0, 512)
        assert not r.simple and len(r.chunks) == 1
        assert r.chunks[0].type == n.REPLY_TYPE_ERROR
        assert r.chunks[0].done and r.chunks[0].error == n.EIO
        # Without SR the same failure is a simple reply.
    with n.Client(s.sock) as c:
        c.handshake()
        r = c.request(n.CMD_READ, 0, 0, 512)
        assert r.simple and r.error == n.EIO and r.data == b""


def test_error_chunk_layout_bytes(servers, impl):
    """R-17: ERROR chunk = 20-byte header (DONE, type 0x8001, cookie,
    length 6 + m), u32 error, u16 m, m bytes of message (nbdkit: m = 0;
    nbdsrv may add text)."""
    s = servers.get(impl, *MEMORY)
    with n.Client(s.sock) as c:
        c.handshake(structured=True)
        cookie = c.send_request(n.CMD_READ, offset=SIZE, length=1)
        magic, flags, ctype, ck, length = struct.unpack(">IHHQI",
                                                        c.recv_exact(20))
        assert (magic, flags, ctype, ck) == (n.STRUCTURED_REPLY_MAGIC,
                                             n.REPLY_FLAG_DONE,
                                             n.REPLY_TYPE_ERROR, cookie)
        assert 6 <= length <= 6 + 4096
        err, mlen = struct.unpack(">IH", c.recv_exact(6))
        assert err == n.EINVAL and length == 6 + mlen
        msg = c.recv_exact(mlen)
        msg.decode("utf-8")
        if s.impl == "nbdkit":
            assert mlen == 0


def test_error_chunk_message_nbdsrv(servers, failing):
    """R-17 (beyond): nbdsrv's ERROR chunks carry a non-empty
    human-readable message, for validation errors and plugin errors."""
    s = servers.get("nbdsrv", *MEMORY)
    with n.Client(s.sock) as c:
        c.handshake(structured=True)
        r = c.request(n.CMD_READ, 0, SIZE, 512)
        msg = r.chunks[0].message
        assert msg, "empty ERROR chunk message"
        text = msg.decode("utf-8")
        assert text.strip() and "\0" not in text and len(msg) <= 4096
    s = servers.get("nbdsrv", *failing)
    with n.Client(s.sock) as c:
        c.handshake(structured=True)
        r = c.request(n.CMD_READ, 0, 0, 512)
        assert r.chunks[0].error == n.EIO
        assert r.chunks[0].message.decode("utf-8").strip()


@pytest.mark.parametrize("cmd,flags,offset,length,want", [
    (n.CMD_WRITE, 0, SIZE, 512, n.ENOSPC),
    (n.CMD_TRIM, 0, 0, 0, n.EINVAL),
    (n.CMD_FLUSH, 0, 1, 0, n.EINVAL),
    (n.CMD_CACHE, n.CMD_FLAG_DF, 0, 512, n.EINVAL),
    (9, 0, 0, 512, n.EINVAL),
])
def test_structured_non_read_error_either_form(servers, impl, cmd, flags,
                                               offset, length, want):
    """§5.1/R-17: under SR an error for a command other than READ and
    BLOCK_STATUS is simple (nbdkit) or one ERROR chunk (nbdsrv may)."""
    s = servers.get(impl, *MEMORY)
    with n.Client(s.sock) as c:
        c.handshake(structured=True)
        payload = bytes(length) if cmd == n.CMD_WRITE else None
        r = c.request(cmd, flags, offset, length, payload)
        assert is_error_reply(r, want), r
        if s.impl == "nbdkit":
            assert r.simple


@pytest.mark.parametrize("cmd,length", [
    (n.CMD_WRITE, 512), (n.CMD_FLUSH, 0), (n.CMD_TRIM, 512),
    (n.CMD_CACHE, 512), (n.CMD_WRITE_ZEROES, 512)])
def test_structured_non_read_success_simple(servers, impl, cmd, length):
    """§5.1: under SR a successful non-READ, non-BLOCK_STATUS command
    still gets a simple reply (nbdkit's choice, kept by nbdsrv)."""
    s = servers.get(impl, *MEMORY)
    with n.Client(s.sock) as c:
        c.handshake(structured=True)
        r = c.request(cmd, 0, 0, length)
        assert r.simple and r.error == 0


def test_block_status_error_is_chunk(servers, impl):
    """§5.1: BLOCK_STATUS errors under SR are ERROR chunks (V-14: no
    context selected; V-2: out of range)."""
    s = servers.get(impl, *MEMORY)
    with n.Client(s.sock) as c:
        c.handshake(structured=True)
        r = c.request(n.CMD_BLOCK_STATUS, 0, 0, 512)
        assert not r.simple and r.chunks[0].type == n.REPLY_TYPE_ERROR
        assert r.error == n.EINVAL
    with n.Client(s.sock) as c:
        c.handshake(structured=True, meta=True)
        r = c.request(n.CMD_BLOCK_STATUS, 0, SIZE, 512)
        assert not r.simple and r.chunks[0].type == n.REPLY_TYPE_ERROR
        assert r.error == n.EINVAL


def test_libnbd_simple_and_structured(servers, impl):
    """§5.4: libnbd negotiates SR by default; with it turned off reads
    still work through simple replies."""
    s = servers.get(impl, *MEMORY)
    for want_sr in (True, False):
        h = nbd.NBD()
        h.set_request_structured_replies(want_sr)
        h.connect_unix(s.sock)
        try:
            assert h.get_structured_replies_negotiated() == want_sr
            assert h.pread(4096, 8192) == bytes(4096)
            with pytest.raises(nbd.Error) as e:
                h.set_strict_mode(0)
                h.pread(512, SIZE)
            assert e.value.errnum == n.EINVAL
        finally:
            h.shutdown()


# --- §5.2 block status -------------------------------------------------------------

def one_bs_chunk(r):
    assert not r.simple and r.error == 0
    assert len(r.chunks) == 1, r.chunks
    ch = r.chunks[0]
    assert ch.type == n.REPLY_TYPE_BLOCK_STATUS and ch.done
    assert ch.context == 1
    assert len(ch.payload) == 4 + 8 * len(ch.extents)
    assert ch.extents
    return ch.extents


@pytest.fixture
def written(fresh):
    """§5.4 pin set-up: 1 MiB memory disk, 4096 bytes written at
    65536; a connection with base:allocation selected."""
    s = fresh()
    c = n.Client(s.sock)
    c.handshake(structured=True, meta=True)
    assert c.request(n.CMD_WRITE, 0, 65536, 4096, b"\x55" * 4096).error == 0
    yield c
    c.close()


def test_block_status_pin_small_query(written):
    """§5.4 pin: a 4096-byte query at 0 answers one descriptor (32768,
    3), longer than the request (R-22)."""
    assert one_bs_chunk(written.request(n.CMD_BLOCK_STATUS, 0, 0,
                                        4096)) == [(32768, 3)]


def test_block_status_pin_req_one(written):
    """§5.4 pin / R-21: the same with REQ_ONE → (4096, 3)."""
    assert one_bs_chunk(written.request(n.CMD_BLOCK_STATUS,
                                        n.CMD_FLAG_REQ_ONE, 0,
                                        4096)) == [(4096, 3)]


def test_block_status_pin_whole_disk(written):
    """§5.4 pin: a 1 MiB query → (65536,3), (32768,0), (950272,3)."""
    assert one_bs_chunk(written.request(n.CMD_BLOCK_STATUS, 0, 0, SIZE)) \
        == [(65536, 3), (32768, 0), (950272, 3)]


def test_block_status_whole_disk_req_one(written):
    """R-21: REQ_ONE on the whole disk → the first extent only."""
    assert one_bs_chunk(written.request(n.CMD_BLOCK_STATUS,
                                        n.CMD_FLAG_REQ_ONE, 0, SIZE)) \
        == [(65536, 3)]


@pytest.mark.parametrize("offset,length", [
    (65536, 4096), (65536 + 100, 10), (60000, 10000), (98304, 1),
    (0, 65537), (SIZE - 1, 1), (32768, 65536 + 32768)])
def test_block_status_walk_rules(written, offset, length):
    """R-22: descriptors start at the request offset and are contiguous;
    every one but the last ends inside the request; the last reaches or
    passes its end; lengths are non-zero, statuses only use bits 0-1.
    With REQ_ONE: exactly one descriptor clipped to the request."""
    ext = one_bs_chunk(written.request(n.CMD_BLOCK_STATUS, 0, offset,
                                       length))
    end = offset + length
    pos = offset
    for i, (ln, st) in enumerate(ext):
        assert ln > 0 and st & ~3 == 0
        pos += ln
        if i < len(ext) - 1:
            assert pos < end
    assert pos >= end
    one = one_bs_chunk(written.request(n.CMD_BLOCK_STATUS,
                                       n.CMD_FLAG_REQ_ONE, offset, length))
    assert len(one) == 1
    assert one[0][0] == min(ext[0][0], length)
    assert one[0][1] == ext[0][1]


def test_block_status_data_region(written):
    """R-22: the allocated page is reported as data from any offset in
    it (65536 + 100: the page's remainder, status 0)."""
    assert one_bs_chunk(written.request(n.CMD_BLOCK_STATUS,
                                        n.CMD_FLAG_REQ_ONE, 65636, 10)) \
        == [(10, 0)]
    ext = one_bs_chunk(written.request(n.CMD_BLOCK_STATUS, 0, 65636, 10))
    assert ext == [(32668, 0)]


def test_block_status_libnbd_pins(fresh):
    """§5.4 pins through libnbd's block_status callback."""
    s = fresh()
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_unix(s.sock)
    try:
        h.pwrite(b"\x55" * 4096, 65536)
        got = []

        def cb(ctx, offset, entries, err):
            got.append((ctx, offset, list(entries)))
            return 0

        h.block_status(SIZE, 0, cb)
        assert got == [("base:allocation", 0,
                        [65536, 3, 32768, 0, 950272, 3])]
        got.clear()
        h.block_status(4096, 0, cb, nbd.CMD_FLAG_REQ_ONE)
        assert got == [("base:allocation", 0, [4096, 3])]
    finally:
        h.shutdown()


# --- §5.3 serialisation ------------------------------------------------------------

def fill_pattern(c, size):
    """Write a position-dependent pattern over the first SIZE bytes."""
    blob = b"".join(struct.pack(">Q", i) for i in range(0, size, 8))
    step = 256 * 1024
    for off in range(0, size, step):
        assert c.request(n.CMD_WRITE, 0, off, step,
                         blob[off:off + step]).error == 0
    return blob


@pytest.mark.parametrize("structured", [False, True])
def test_parallel_reads_one_connection(fresh, structured):
    """R-24/R-27: 64 pipelined reads of different sizes on one
    connection of a multi-threaded server: every cookie is answered
    exactly once, no reply is split by another (the parser asserts
    that every chunk continues the reply it belongs to), and every
    reply carries the right data."""
    s = fresh("--threads=16", *MEMORY)
    rng = random.Random(64)
    with n.Client(s.sock) as c:
        c.handshake(structured=structured)
        blob = fill_pattern(c, SIZE)
        want = {}
        for i in range(64):
            length = rng.choice([1, 512, 4096, 65536, 262144, 1 << 20])
            offset = rng.randrange(0, SIZE - length + 1)
            cookie = c.send_request(n.CMD_READ, offset=offset,
                                    length=length, cookie=(i << 48) | i)
            want[cookie] = (offset, blob[offset:offset + length])
        seen = []
        for _ in range(64):
            r = c.read_reply()
            assert r.cookie in want and r.cookie not in seen
            seen.append(r.cookie)
            assert r.error == 0
            assert r.simple == (not structured)
            offset, data = want[r.cookie]
            assert r.data == data
            if structured:
                assert_read_chunks(r, offset, len(data))
        assert sorted(seen) == sorted(want)
        assert not c.pending


def test_parallel_mixed_commands(fresh):
    """R-24: reads, block status and errors interleaved under SR; each
    reply is whole and each cookie answered once."""
    s = fresh("--threads=16", *MEMORY)
    with n.Client(s.sock) as c:
        c.handshake(structured=True, meta=True)
        cookies = set()
        for i in range(64):
            kind = i % 4
            if kind == 0:
                ck = c.send_request(n.CMD_READ, offset=i * 4096,
                                    length=65536)
            elif kind == 1:
                ck = c.send_request(n.CMD_BLOCK_STATUS, offset=0,
                                    length=SIZE)
            elif kind == 2:
                ck = c.send_request(n.CMD_READ, offset=SIZE, length=512)
            else:
                ck = c.send_request(n.CMD_WRITE, offset=i * 512,
                                    length=512, payload=bytes(512))
            cookies.add(ck)
        seen = set()
        for _ in range(64):
            r = c.read_reply()
            assert r.cookie not in seen
            seen.add(r.cookie)
        assert seen == cookies


@pytest.mark.parametrize("cookie", [0, 1, 0x8000000000000000,
                                    0xffffffffffffffff, 0x0123456789abcdef])
def test_cookie_echoed(servers, impl, cookie):
    """R-27: the cookie is echoed unchanged, in simple and structured
    replies, for success and error."""
    s = servers.get(impl, *MEMORY)
    for structured in (False, True):
        with n.Client(s.sock) as c:
            c.handshake(structured=structured)
            c.send_request(n.CMD_READ, offset=0, length=8, cookie=cookie)
            assert c.read_reply().cookie == cookie
            c.send_request(n.CMD_READ, offset=SIZE, length=8, cookie=cookie)
            r = c.read_reply()
            assert r.cookie == cookie and r.error == n.EINVAL
