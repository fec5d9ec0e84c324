"""Extended headers (protocol-rules.md §6, X-1..X-15), driven by our own
raw client (nbdraw.py): libnbd 1.14 and QEMU 7.2 on this system do not
speak them.  nbdkit 1.32 does not offer them either, so these run
against nbdsrv alone; that clients which do not ask for them are
unaffected is the rest of the suite, which runs unchanged.
"""

import pytest

from util import accepting
from nbdraw import (
    Client, Disconnected,
    OPT_EXTENDED_HEADERS, OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT,
    OPT_LIST_META_CONTEXT,
    REP_ACK, REP_META_CONTEXT, REP_ERR_INVALID, REP_ERR_UNSUP,
    REP_ERR_EXT_HEADER_REQD,
    CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES,
    CMD_BLOCK_STATUS,
    CMD_FLAG_FUA, CMD_FLAG_REQ_ONE, CMD_FLAG_PAYLOAD_LEN,
    REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_ERROR,
    REPLY_TYPE_BLOCK_STATUS_EXT, REPLY_FLAG_DONE,
    STATE_HOLE, STATE_ZERO, TF_SEND_DF,
    EINVAL, ENOMEM,
    meta_payload,
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@pytest.fixture
def start(server):
    """conftest's nbdsrv factory, returning once the server accepts;
    every server is stopped at teardown."""
    return accepting(server)


@pytest.fixture
def mem(start):
    return start("memory", "8G")


def ext_client(srv, meta=False):
    c = Client(srv.sock)
    c.start()
    r = c.extended_headers()
    assert r[-1].type == REP_ACK, r
    if meta:
        r = c.option(OPT_SET_META_CONTEXT,
                     meta_payload(b"", [b"base:allocation"]))
        assert [x.type for x in r] == [REP_META_CONTEXT, REP_ACK], r
    r = c.go()
    assert r[-1].type == REP_ACK, r
    return c


# --- negotiation (X-1..X-6) -------------------------------------------

def test_negotiate(mem):
    """X-1: ACK, then INVALID when repeated; X-6: SEND_DF is set."""
    with Client(mem.sock) as c:
        c.start()
        assert c.extended_headers()[-1].type == REP_ACK
        assert c.option(OPT_EXTENDED_HEADERS)[-1].type == REP_ERR_INVALID
        c.go()
        assert c.eflags & TF_SEND_DF


def test_negotiate_with_data(mem):
    """X-1: the option takes no data."""
    with Client(mem.sock) as c:
        c.start()
        r = c.option(OPT_EXTENDED_HEADERS, b"x")
        assert r[-1].type == REP_ERR_INVALID
        # Still compact: the connection goes on as before.
        assert c.option(OPT_STRUCTURED_REPLY)[-1].type == REP_ACK


def test_no_downgrade_to_structured(mem):
    """X-2: STRUCTURED_REPLY after extended headers is refused."""
    with Client(mem.sock) as c:
        c.start()
        c.extended_headers()
        r = c.option(OPT_STRUCTURED_REPLY)
        assert r[-1].type == REP_ERR_EXT_HEADER_REQD
        assert r[-1].data, "the refusal says why"


def test_structured_then_extended(mem):
    """Either order: structured replies first, then extended headers."""
    with Client(mem.sock) as c:
        c.start()
        assert c.structured_reply()[-1].type == REP_ACK
        assert c.extended_headers()[-1].type == REP_ACK
        c.go()
        r = c.request(CMD_FLUSH)
        assert r.chunks[0].type == REPLY_TYPE_NONE


def test_export_name_after_extended(mem):
    """X-3: EXPORT_NAME cannot answer with extended information, so it
    is a protocol violation: the server hangs up."""
    with Client(mem.sock) as c:
        c.start()
        c.extended_headers()
        c.send_option(1, b"")
        assert c.wait_closed()


def test_meta_context_after_extended_only(mem):
    """X-4: meta contexts need structured replies or extended headers."""
    with Client(mem.sock) as c:
        c.start()
        c.extended_headers()
        for opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
            r = c.option(opt, meta_payload(b"", [b"base:allocation"]))
            assert [x.type for x in r] == [REP_META_CONTEXT, REP_ACK], r


def test_no_sr_refuses_extended(start):
    """Extended headers imply structured replies, which --no-sr turns
    off."""
    srv = start("--no-sr", "memory", "1M")
    with Client(srv.sock) as c:
        c.start()
        assert c.extended_headers()[-1].type == REP_ERR_UNSUP


# --- requests and replies (X-7..X-15) ----------------------------------

def test_write_read_round_trip(mem):
    """X-8, X-13: a WRITE with PAYLOAD_LEN, answered by a NONE chunk;
    a READ answered by OFFSET_DATA in a 32-byte header whose offset
    field echoes the request's (the raw client checks that)."""
    with ext_client(mem) as c:
        data = bytes(range(256)) * 16
        r = c.request(CMD_WRITE, CMD_FLAG_PAYLOAD_LEN | CMD_FLAG_FUA,
                      offset=5 * GiB, length=len(data), payload=data)
        assert r.error == 0
        assert [(x.type, x.flags) for x in r.chunks] == [
            (REPLY_TYPE_NONE, REPLY_FLAG_DONE)]
        assert r.chunks[0].offset_field == 5 * GiB
        r = c.request(CMD_READ, offset=5 * GiB, length=len(data))
        assert r.error == 0 and r.data == data
        assert r.chunks[-1].type == REPLY_TYPE_OFFSET_DATA


def test_every_success_is_a_chunk(mem):
    """X-13: no simple replies under extended headers, for any
    command."""
    with ext_client(mem) as c:
        for cmd, length in ((CMD_FLUSH, 0), (CMD_TRIM, 4096),
                            (CMD_CACHE, 4096), (CMD_WRITE_ZEROES, 4096)):
            r = c.request(cmd, offset=0 if cmd == CMD_FLUSH else 4096,
                          length=length)
            assert not r.simple and r.error == 0, (cmd, r)
            assert r.chunks[-1].type == REPLY_TYPE_NONE


def test_compact_request_after_negotiation(mem):
    """X-7: a compact request once extended headers are on is a
    protocol violation: the server hangs up."""
    with ext_client(mem) as c:
        c.send_request(CMD_FLUSH, extended=False)
        assert c.wait_closed()


def test_extended_request_without_negotiation(mem):
    """X-7: an extended request on a compact connection likewise."""
    with Client(mem.sock) as c:
        c.handshake(structured=True)
        c.send_request(CMD_FLUSH, extended=True)
        assert c.wait_closed()


def test_write_without_payload_len(mem):
    """X-9: a WRITE without PAYLOAD_LEN has no payload: EINVAL, with a
    message, and the connection goes on."""
    with ext_client(mem) as c:
        r = c.request(CMD_WRITE, 0, offset=0, length=4096, payload=b"")
        assert r.error == EINVAL
        assert r.chunks[0].type == REPLY_TYPE_ERROR
        assert b"PAYLOAD_LEN" in r.chunks[0].message
        assert c.request(CMD_FLUSH).error == 0


def test_trim_with_payload(mem):
    """X-10: any other command with PAYLOAD_LEN: the payload is read
    and dropped, then EINVAL; the next request is framed right."""
    with ext_client(mem) as c:
        r = c.request(CMD_TRIM, CMD_FLAG_PAYLOAD_LEN, offset=0,
                      length=512, payload=b"\xee" * 512)
        assert r.error == EINVAL
        r = c.request(CMD_READ, offset=0, length=512)
        assert r.error == 0 and r.data == bytes(512)


def test_huge_payload_disconnects(mem):
    """X-10: a payload too large to skip ends the connection."""
    with ext_client(mem) as c:
        c.send_request(CMD_TRIM, CMD_FLAG_PAYLOAD_LEN, length=1 << 40,
                       payload=b"")
        assert c.wait_closed()


def test_read_over_the_limit(mem):
    """X-11, V-12: a READ above 64 MiB is ENOMEM, not a hang."""
    with ext_client(mem) as c:
        r = c.request(CMD_READ, offset=0, length=65 * MiB)
        assert r.error == ENOMEM
        assert c.request(CMD_FLUSH).error == 0


def test_zero_over_4g(mem):
    """X-11: one WRITE_ZEROES of 5 GiB zeroes all of it."""
    with ext_client(mem) as c:
        ones = b"\x01" * 4096
        for off in (0, 3 * GiB, 5 * GiB - 4096):
            c.request(CMD_WRITE, CMD_FLAG_PAYLOAD_LEN, offset=off,
                      length=4096, payload=ones)
        r = c.request(CMD_WRITE_ZEROES, offset=0, length=5 * GiB)
        assert r.error == 0, r
        for off in (0, 3 * GiB, 5 * GiB - 4096):
            assert c.request(CMD_READ, offset=off,
                             length=4096).data == bytes(4096)


def test_block_status_64bit(mem):
    """X-14: BLOCK_STATUS_EXT with 64-bit descriptors: an empty 8 GiB
    disk is one descriptor longer than 4 GiB."""
    with ext_client(mem, meta=True) as c:
        r = c.request(CMD_BLOCK_STATUS, offset=0, length=8 * GiB)
        assert r.error == 0
        assert [x.type for x in r.chunks] == [REPLY_TYPE_BLOCK_STATUS_EXT]
        chunk = r.chunks[0]
        assert chunk.context == 1
        assert chunk.extents[0][1] == STATE_HOLE | STATE_ZERO
        assert chunk.extents[0][0] > 4 * GiB


def test_block_status_req_one(mem):
    """R-21 with 64-bit descriptors: one, clipped to the request."""
    with ext_client(mem, meta=True) as c:
        r = c.request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, offset=GiB,
                      length=5 * GiB)
        assert r.chunks[0].extents == [(5 * GiB, STATE_HOLE | STATE_ZERO)]


def test_error_chunk_offset(mem):
    """X-13, X-15: an error's header echoes the request offset."""
    with ext_client(mem) as c:
        r = c.request(CMD_READ, offset=8 * GiB - 512, length=1024)
        assert r.error == EINVAL
        assert r.chunks[0].offset_field == 8 * GiB - 512
        assert b"export size" in r.chunks[0].message


def test_64bit_trim_reaches_the_plugin_in_pieces(start, tmp_path):
    """X-11: the plugin API takes 32-bit counts, so a 7 GiB TRIM
    reaches the plugin as pieces of at most 3 GiB, in ascending order,
    covering it exactly."""
    log = tmp_path / "trims"
    srv = start("eval", "get_size=echo 8G", "pread=dd if=/dev/zero "
                "bs=$3 count=1 iflag=count_bytes status=none",
                "pwrite=cat >/dev/null", "can_write=exit 0",
                "can_trim=exit 0",
                "trim=echo $3 $4 >> %s" % log)
    with ext_client(srv) as c:
        r = c.request(CMD_TRIM, offset=GiB, length=7 * GiB)
        assert r.error == 0, r
    pieces = [tuple(map(int, l.split())) for l in
              log.read_text().splitlines()]
    assert len(pieces) == 3
    pos = GiB
    for count, offset in pieces:
        assert offset == pos and 0 < count <= 3 * GiB
        pos += count
    assert pos == 8 * GiB


def test_parallel_extended_requests(mem):
    """Many requests in flight at once, answered each with its own
    cookie and offset."""
    with ext_client(mem) as c:
        cookies = {}
        for i in range(64):
            off = i * 65536
            payload = bytes([i]) * 4096
            cookies[c.send_request(CMD_WRITE, CMD_FLAG_PAYLOAD_LEN,
                                   offset=off, length=4096,
                                   payload=payload)] = off
        for _ in range(64):
            r = c.read_reply()
            assert r.error == 0
            cookies.pop(r.cookie)
        assert not cookies
        for i in range(64):
            r = c.request(CMD_READ, offset=i * 65536, length=4096)
            assert r.data == bytes([i]) * 4096
