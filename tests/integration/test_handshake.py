"""Handshake conformance: H-1..H-12 and §1.3, §1.4, §1.6 of
protocol-rules.md, driven through the raw client (nbdraw) and libnbd.

Every test runs against nbdsrv and Debian's nbdkit 1.32 unless the rule
is "beyond" (nbdsrv only, named *_nbdsrv) or nbdkit 1.32 is known to
differ from the nbdkit 1.42 behaviour the rules pin (strict xfail).
"""
import struct

import pytest

import nbdraw as n
from conftest import start_server
from util import SH_PLUGIN, write_script

nbd = pytest.importorskip("nbd")

SIZE = 1024 * 1024
MEMORY = ("memory", "size=1M")

# An export with a description and block sizes, whose open fails for
# the export name "bad" (the §1.4 step 5 check).
SH_DESCRIBED = r"""#!/bin/sh
case "$1" in
  open) if [ "$3" = bad ]; then echo "EINVAL no export bad" >&2; exit 1; fi
        echo h ;;
  get_size) echo 1048576 ;;
  export_description) echo "a test disk" ;;
  block_size) echo 512 4096 1048576 ;;
  can_write) exit 0 ;;
  can_flush|can_trim|can_zero|can_fast_zero|can_extents) exit 3 ;;
  can_fua|can_cache) echo none ;;
  pread) head -c "$3" /dev/zero ;;
  pwrite) cat >/dev/null ;;
  *) exit 2 ;;
esac
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    cache = n.ServerCache(start_server, tmp_path_factory.mktemp("srv"))
    yield cache
    cache.stop_all()


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    return (SH_PLUGIN, write_script(tmp_path_factory.mktemp("sh"),
                                    "described.sh", SH_DESCRIBED))


@pytest.fixture
def mem(servers, impl):
    """The 1 MiB memory export of IMPL."""
    return servers.get(impl, *MEMORY)


def client(srv):
    return n.Client(srv.sock)


def assert_closed(c, send=None):
    """The server hangs up: optionally send SEND first (which may
    already fail), then no reply may arrive, only EOF."""
    if send is not None:
        try:
            c.send(send)
        except n.Disconnected:
            return
    try:
        data = c.sock.recv(1)
    except ConnectionResetError:
        return
    assert data == b"", "server answered %r instead of closing" % data


def assert_transmission_works(c):
    r = c.request(n.CMD_READ, 0, 0, 512)
    assert r.error == 0 and r.data == bytes(512)


def types(replies):
    return [r.type for r in replies]


# --- H-1, H-2 greeting and client flags -----------------------------------

def test_greeting_flags(mem):
    """H-1: NBDMAGIC, IHAVEOPT, then FIXED_NEWSTYLE | NO_ZEROES."""
    with client(mem) as c:
        raw = c.recv_exact(18)
        assert raw == struct.pack(">QQH", n.NBDMAGIC, n.IHAVEOPT, 3)


def test_mask_handshake(servers, impl):
    """H-1: --mask-handshake ANDs a mask into the handshake flags; a
    client then setting the masked-out bit is disconnected (H-2)."""
    s = servers.get(impl, "--mask-handshake=1", *MEMORY)
    with client(s) as c:
        assert c.greeting() == n.FLAG_FIXED_NEWSTYLE
        c.send_client_flags(n.FLAG_C_FIXED_NEWSTYLE | n.FLAG_C_NO_ZEROES)
        assert_closed(c, struct.pack(">QII", n.IHAVEOPT, n.OPT_LIST, 0))
    with client(s) as c:
        c.start(n.FLAG_C_FIXED_NEWSTYLE)
        assert c.go()[-1].type == n.REP_ACK


@pytest.mark.parametrize("cflags", [0x4, 0x3 | 0x4, 0x80000000, 0xffffffff,
                                    0x100])
def test_unoffered_client_flags(mem, cflags):
    """H-2: any client flag the server did not offer → hard disconnect,
    before any option is read."""
    with client(mem) as c:
        c.greeting()
        c.send_client_flags(cflags)
        assert_closed(c, struct.pack(">QII", n.IHAVEOPT, n.OPT_LIST, 0))


@pytest.mark.parametrize("cflags", [0, n.FLAG_C_FIXED_NEWSTYLE,
                                    n.FLAG_C_NO_ZEROES, 3])
def test_offered_client_flags(mem, cflags):
    """H-2: every combination of the offered flags is accepted."""
    with client(mem) as c:
        c.start(cflags)
        pad = c.export_name(b"", no_zeroes=bool(cflags & 2))
        assert c.size == SIZE
        assert pad == (b"" if cflags & 2 else bytes(124))
        assert_transmission_works(c)


# --- H-3 non-fixed clients ----------------------------------------------

@pytest.mark.parametrize("opt", [n.OPT_LIST, n.OPT_STRUCTURED_REPLY,
                                 n.OPT_ABORT, 99])
def test_nonfixed_client_option_invalid(mem, opt):
    """H-3: a client without C_FIXED_NEWSTYLE may only send EXPORT_NAME;
    any other option (with an empty payload) is INVALID, and the
    handshake continues."""
    with client(mem) as c:
        c.start(0)
        r = c.option(opt)
        assert types(r) == [n.REP_ERR_INVALID]
        assert r[0].option == opt
        pad = c.export_name(b"", no_zeroes=False)
        assert pad == bytes(124)
        assert_transmission_works(c)


# H-3 beyond: nbdkit does not read the payload and loses the stream
# (observed with 1.32: the payload is taken for the next option header
# and the connection is dropped), so this runs against nbdsrv only.
@pytest.mark.parametrize("payload", [b"abcd", b"x" * 100,
                                     struct.pack(">QII", n.IHAVEOPT,
                                                 n.OPT_ABORT, 0)])
def test_nonfixed_client_payload_skipped_nbdsrv(servers, payload):
    """H-3 (beyond): the payload of a rejected option is consumed, so the
    stream stays in sync — even when the payload looks like an option."""
    s = servers.get("nbdsrv", *MEMORY)
    with client(s) as c:
        c.start(0)
        r = c.option(n.OPT_LIST, payload)
        assert types(r) == [n.REP_ERR_INVALID]
        r = c.option(n.OPT_INFO, n.info_payload())
        assert types(r) == [n.REP_ERR_INVALID]
        c.export_name(b"", no_zeroes=False)
        assert_transmission_works(c)


# --- H-4, H-5 option framing ----------------------------------------------

@pytest.mark.parametrize("magic", [0, n.IHAVEOPT + 1, n.NBDMAGIC,
                                   n.OPT_REPLY_MAGIC])
def test_bad_option_magic(mem, magic):
    """H-4: wrong option magic → hard disconnect, no reply."""
    with client(mem) as c:
        c.start()
        c.send_option(n.OPT_LIST, magic=magic)
        assert_closed(c)


def test_bad_option_magic_after_good_options(mem):
    """H-4 holds in the middle of haggling too."""
    with client(mem) as c:
        c.start()
        assert c.option(n.OPT_LIST)[-1].type == n.REP_ACK
        c.send_option(n.OPT_LIST, magic=0x1234)
        assert_closed(c)


@pytest.mark.parametrize("length", [n.MAX_REQUEST_SIZE + 1, 0xffffffff])
@pytest.mark.parametrize("opt", [99, n.OPT_GO, n.OPT_LIST])
def test_option_too_long(mem, length, opt):
    """H-5: option data longer than 64 MiB → hard disconnect, without
    the server waiting for the payload."""
    with client(mem) as c:
        c.start()
        c.send_option(opt, length=length)
        assert_closed(c)


@pytest.mark.parametrize("length", [1 << 20, 32 << 20, n.MAX_REQUEST_SIZE])
def test_option_payload_up_to_64mib_accepted(mem, length):
    """H-5: payloads up to MAX_REQUEST_SIZE are read (and skipped for an
    unknown option) normally: UNSUP, not a size error."""
    with client(mem) as c:
        c.start()
        r = c.option(99, bytes(length))
        assert types(r) == [n.REP_ERR_UNSUP]
        assert c.go()[-1].type == n.REP_ACK


# --- H-6 option budget ----------------------------------------------------

def test_option_budget_32(mem):
    """H-6: 31 options and then GO succeed."""
    with client(mem) as c:
        c.start()
        for _ in range(31):
            assert types(c.option(99)) == [n.REP_ERR_UNSUP]
        assert c.go()[-1].type == n.REP_ACK
        assert_transmission_works(c)


def test_option_budget_exhausted(mem):
    """H-6: 32 options answered; the 33rd in a row gets no answer, the
    server hangs up."""
    with client(mem) as c:
        c.start()
        for _ in range(32):
            assert types(c.option(99)) == [n.REP_ERR_UNSUP]
        assert_closed(c, struct.pack(">QII", n.IHAVEOPT, n.OPT_GO, 6) +
                      n.info_payload())


def test_option_budget_grows_with_list(mem):
    """H-6: a LIST answering one export adds 32 options: LIST, 62 more
    and GO (64 in all) succeed; LIST and 63 more exhaust it."""
    with client(mem) as c:
        c.start()
        assert c.option(n.OPT_LIST)[-1].type == n.REP_ACK
        for _ in range(62):
            assert types(c.option(99)) == [n.REP_ERR_UNSUP]
        assert c.go()[-1].type == n.REP_ACK
    with client(mem) as c:
        c.start()
        assert c.option(n.OPT_LIST)[-1].type == n.REP_ACK
        for _ in range(63):
            assert types(c.option(99)) == [n.REP_ERR_UNSUP]
        assert_closed(c, struct.pack(">QII", n.IHAVEOPT, 99, 0))


# --- §1.3 unknown options, ABORT, LIST ------------------------------------

@pytest.mark.parametrize("opt", [0, 4, 12, 99, 0x7fffffff, 0xffffffff])
@pytest.mark.parametrize("payload", [b"", b"junk", bytes(5000)])
def test_unknown_option_unsup(mem, opt, payload):
    """§1.3: an unknown option gets UNSUP, its payload is consumed, and
    haggling continues."""
    with client(mem) as c:
        c.start()
        r = c.option(opt, payload)
        assert types(r) == [n.REP_ERR_UNSUP]
        assert r[0].option == opt
        r = c.option(n.OPT_LIST)
        assert types(r) == [n.REP_SERVER, n.REP_ACK]
        assert c.go()[-1].type == n.REP_ACK
        assert_transmission_works(c)


@pytest.mark.parametrize("payload", [b"", b"ignored data"])
def test_abort(mem, payload):
    """§1.3: ABORT → ACK (any data ignored), then the server closes."""
    with client(mem) as c:
        c.start()
        r = c.option(n.OPT_ABORT, payload)
        assert types(r) == [n.REP_ACK]
        assert r[0].option == n.OPT_ABORT and r[0].data == b""
        assert c.wait_closed()


def test_list(mem):
    """§1.3: LIST → one SERVER reply per export (memory: one, named ""),
    then ACK."""
    with client(mem) as c:
        c.start()
        r = c.option(n.OPT_LIST)
        assert types(r) == [n.REP_SERVER, n.REP_ACK]
        assert all(x.option == n.OPT_LIST for x in r)
        assert n.parse_server(r[0]) == (b"", b"")
        assert r[0].data == b"\0\0\0\0"


def test_list_with_data_invalid(mem):
    """§1.3: LIST with data → INVALID (payload consumed); a LIST after
    it still works (the failed one does not count as a LIST)."""
    with client(mem) as c:
        c.start()
        assert types(c.option(n.OPT_LIST, b"x" * 10)) == [n.REP_ERR_INVALID]
        assert types(c.option(n.OPT_LIST)) == [n.REP_SERVER, n.REP_ACK]


def test_list_twice_invalid(mem):
    """§1.3: a second LIST on the same connection → INVALID."""
    with client(mem) as c:
        c.start()
        assert types(c.option(n.OPT_LIST)) == [n.REP_SERVER, n.REP_ACK]
        assert types(c.option(n.OPT_LIST)) == [n.REP_ERR_INVALID]
        assert c.go()[-1].type == n.REP_ACK


def test_list_libnbd(mem):
    """§1.3: libnbd's opt_list sees one export named ""."""
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(mem.sock)
    seen = []
    count = h.opt_list(lambda name, desc: seen.append((name, desc)) or 0)
    assert count == 1
    assert seen == [("", "")]
    h.opt_abort()
    assert h.aio_is_closed()


# --- STARTTLS and STRUCTURED_REPLY ------------------------------------------

def test_starttls_without_tls(mem):
    """§1.3/§1.5: without --tls, STARTTLS → POLICY and haggling goes on.
    Observed: Debian's nbdkit 1.32 (built with GnuTLS, no --tls) answers
    NBD_REP_ERR_POLICY; nbdsrv has no TLS yet and answers POLICY too."""
    with client(mem) as c:
        c.start()
        assert types(c.option(n.OPT_STARTTLS)) == [n.REP_ERR_POLICY]
        assert types(c.option(n.OPT_STARTTLS)) == [n.REP_ERR_POLICY]
        assert c.go()[-1].type == n.REP_ACK
        assert_transmission_works(c)


def test_starttls_with_data_invalid(mem):
    """§1.3: STARTTLS with data → INVALID (checked before the policy)."""
    with client(mem) as c:
        c.start()
        assert types(c.option(n.OPT_STARTTLS, b"x")) == [n.REP_ERR_INVALID]
        assert c.go()[-1].type == n.REP_ACK


def test_structured_reply(mem):
    """§1.3: STRUCTURED_REPLY → ACK; SEND_DF appears in the flags."""
    with client(mem) as c:
        c.start()
        assert types(c.option(n.OPT_STRUCTURED_REPLY)) == [n.REP_ACK]
        c.go()
        assert c.eflags & n.TF_SEND_DF


def test_no_structured_reply_no_df(mem):
    """§1.7: SEND_DF only when structured replies were negotiated."""
    with client(mem) as c:
        c.start()
        c.go()
        assert not c.eflags & n.TF_SEND_DF
        assert c.eflags & n.TF_HAS_FLAGS


def test_structured_reply_with_data_invalid(mem):
    """§1.3: STRUCTURED_REPLY with data → INVALID, not enabled."""
    with client(mem) as c:
        c.start()
        r = c.option(n.OPT_STRUCTURED_REPLY, b"xyz")
        assert types(r) == [n.REP_ERR_INVALID]
        c.go()
        assert not c.eflags & n.TF_SEND_DF
        assert_transmission_works(c)
        # Still simple replies.
        r = c.request(n.CMD_READ, 0, 0, 512)
        assert r.simple


@pytest.mark.parametrize("impl", n.impl_params(
    nbdkit_xfail="nbdkit 1.32 ACKs a repeated STRUCTURED_REPLY; "
    "1.42 (and the rules) say INVALID"))
def test_structured_reply_twice_invalid(servers, impl):
    """§1.3: STRUCTURED_REPLY when already on → INVALID."""
    s = servers.get(impl, *MEMORY)
    with client(s) as c:
        c.start()
        assert types(c.option(n.OPT_STRUCTURED_REPLY)) == [n.REP_ACK]
        assert types(c.option(n.OPT_STRUCTURED_REPLY)) == \
            [n.REP_ERR_INVALID]
        c.go()
        assert c.eflags & n.TF_SEND_DF


# --- §1.4 INFO and GO -------------------------------------------------------

def info_raw(name, n_infos, infos=()):
    """INFO/GO payload with a free-standing info count."""
    return (struct.pack(">I", len(name)) + name +
            struct.pack(">H", n_infos) +
            b"".join(struct.pack(">H", i) for i in infos))


BAD_INFO_PAYLOADS = [
    # step 1: L < 6
    ("L0", b""),
    ("L5", b"\0\0\0\0\0"),
    # step 2: N > L - 6
    ("N-overrun", struct.pack(">I", 10) + b"ab" + b"\0\0"),
    ("N-huge", struct.pack(">I", 0xffffffff) + b"\0\0"),
    # step 3: L != 4 + N + 2 + 2n
    ("n-too-big", info_raw(b"", 2, [n.INFO_NAME])),
    ("n-too-small", info_raw(b"", 0, [n.INFO_NAME])),
    ("trailing-byte", info_raw(b"", 0) + b"\0"),
    ("odd-tail", info_raw(b"", 1, [n.INFO_NAME]) + b"\0"),
    # step 4: name fails H-7
    ("name-nul", info_raw(b"a\0b", 0)),
    ("name-4097", info_raw(b"a" * 4097, 0)),
]


@pytest.mark.parametrize("opt", [n.OPT_INFO, n.OPT_GO])
@pytest.mark.parametrize("label,payload", BAD_INFO_PAYLOADS,
                         ids=[x[0] for x in BAD_INFO_PAYLOADS])
def test_info_go_malformed(mem, opt, label, payload):
    """§1.4 steps 1-4: each malformed INFO/GO → INVALID; haggling
    continues and a good GO afterwards works."""
    with client(mem) as c:
        c.start()
        r = c.option(opt, payload)
        assert types(r) == [n.REP_ERR_INVALID], label
        assert r[0].option == opt
        assert c.go()[-1].type == n.REP_ACK
        assert_transmission_works(c)


@pytest.mark.parametrize("opt", [n.OPT_INFO, n.OPT_GO])
def test_info_go_check_order(servers, described, impl, opt):
    """§1.4: the payload checks (1-4) come before opening the export
    (5): export "bad" fails to open → UNKNOWN, but a malformed request
    for "bad" is INVALID."""
    s = servers.get(impl, *described)
    with client(s) as c:
        c.start()
        r = c.option(opt, n.info_payload(b"bad"))
        assert types(r) == [n.REP_ERR_UNKNOWN]
        r = c.option(opt, info_raw(b"bad", 1))          # step 3
        assert types(r) == [n.REP_ERR_INVALID]
        r = c.option(opt, info_raw(b"bad\0", 0))        # step 4
        assert types(r) == [n.REP_ERR_INVALID]
        r = c.option(opt, struct.pack(">I", 4) + b"bad")  # step 1
        assert types(r) == [n.REP_ERR_INVALID]
        assert c.go(b"good")[-1].type == n.REP_ACK
        assert_transmission_works(c)


def test_info_name_4096_ok(mem):
    """H-7: a 4096-byte name is allowed (4097 is not, above)."""
    with client(mem) as c:
        c.start()
        r = c.go(b"a" * 4096, option=n.OPT_INFO)
        assert types(r) == [n.REP_INFO, n.REP_ACK]


def test_info_export_always_sent(mem):
    """§1.4 step 6: INFO_EXPORT even when nothing was asked; size and
    flags match what GO then reports; INFO leaves haggling open."""
    with client(mem) as c:
        c.start()
        r = c.go(b"", [], option=n.OPT_INFO)
        assert types(r) == [n.REP_INFO, n.REP_ACK]
        itype, (size, eflags) = n.parse_info(r[0])
        assert itype == n.INFO_EXPORT and size == SIZE
        assert eflags & n.TF_HAS_FLAGS
        assert types(c.option(99)) == [n.REP_ERR_UNSUP]   # still haggling
        r = c.go()
        assert types(r) == [n.REP_INFO, n.REP_ACK]
        assert n.parse_info(r[0]) == (n.INFO_EXPORT, (size, eflags))
        assert_transmission_works(c)


def test_info_name_echo_and_ignored_codes(mem):
    """§1.4 step 7: NAME echoes the requested name; EXPORT again and
    unknown codes are ignored; DESCRIPTION and BLOCK_SIZE are not sent
    when the plugin has none (memory)."""
    with client(mem) as c:
        c.start()
        r = c.go(b"foo", [n.INFO_NAME, n.INFO_EXPORT, 99, 0xffff,
                          n.INFO_DESCRIPTION, n.INFO_BLOCK_SIZE],
                 option=n.OPT_INFO)
        assert types(r) == [n.REP_INFO, n.REP_INFO, n.REP_ACK]
        assert n.parse_info(r[0])[0] == n.INFO_EXPORT
        assert n.parse_info(r[1]) == (n.INFO_NAME, b"foo")


def test_info_name_default_export(mem):
    """§1.4 step 7: NAME for the empty name sends the plugin's default
    export name (memory: "")."""
    with client(mem) as c:
        c.start()
        r = c.go(b"", [n.INFO_NAME], option=n.OPT_INFO)
        assert types(r) == [n.REP_INFO, n.REP_INFO, n.REP_ACK]
        assert n.parse_info(r[1]) == (n.INFO_NAME, b"")


@pytest.mark.parametrize("opt", [n.OPT_INFO, n.OPT_GO])
def test_info_description_block_size(servers, described, impl, opt):
    """§1.4 step 7: DESCRIPTION and BLOCK_SIZE when asked and the plugin
    has them, in request order, after EXPORT; not sent unasked."""
    s = servers.get(impl, *described)
    with client(s) as c:
        c.start()
        r = c.go(b"x", [], option=n.OPT_INFO)
        assert types(r) == [n.REP_INFO, n.REP_ACK]
        r = c.go(b"x", [n.INFO_BLOCK_SIZE, n.INFO_NAME, n.INFO_DESCRIPTION],
                 option=opt)
        assert types(r) == [n.REP_INFO] * 4 + [n.REP_ACK]
        got = [n.parse_info(x) for x in r[:4]]
        assert got[0][0] == n.INFO_EXPORT
        assert got[0][1][0] == SIZE
        assert got[1:] == [(n.INFO_BLOCK_SIZE, (512, 4096, 1048576)),
                           (n.INFO_NAME, b"x"),
                           (n.INFO_DESCRIPTION, b"a test disk")]
        if opt == n.OPT_GO:
            assert_transmission_works(c)


def test_go_libnbd_info(servers, described, impl):
    """§1.4 through libnbd: opt_info fills size, name, description and
    block sizes."""
    s = servers.get(impl, *described)
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.set_full_info(True)
    h.connect_unix(s.sock)
    try:
        h.set_export_name("x")
        h.opt_info()
        assert h.get_size() == SIZE
        assert h.get_canonical_export_name() == "x"
        assert h.get_export_description() == "a test disk"
        assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
        assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
        assert h.get_block_size(nbd.SIZE_MAXIMUM) == 1048576
        h.opt_go()
        assert h.pread(512, 0) == bytes(512)
    finally:
        h.shutdown()


# --- EXPORT_NAME ---------------------------------------------------------------

@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name(mem, no_zeroes):
    """§1.3: EXPORT_NAME → size, flags, 124 zero bytes unless the client
    set C_NO_ZEROES; then transmission (the next bytes are replies)."""
    cflags = n.FLAG_C_FIXED_NEWSTYLE | (n.FLAG_C_NO_ZEROES if no_zeroes
                                        else 0)
    with client(mem) as c:
        c.start(cflags)
        c.send_option(n.OPT_EXPORT_NAME, b"")
        size, eflags = struct.unpack(">QH", c.recv_exact(10))
        assert size == SIZE and eflags & n.TF_HAS_FLAGS
        if not no_zeroes:
            assert c.recv_exact(124) == bytes(124)
        # Nothing else is pending: the next bytes answer our request.
        cookie = c.send_request(n.CMD_READ, offset=0, length=16)
        raw = c.recv_exact(16)
        assert raw == struct.pack(">IIQ", n.SIMPLE_REPLY_MAGIC, 0, cookie)
        assert c.recv_exact(16) == bytes(16)


@pytest.mark.parametrize("name", [b"a\0b", b"x" * 4097])
def test_export_name_bad_disconnects(mem, name):
    """H-7: a bad EXPORT_NAME name cannot get an error reply: hard
    disconnect."""
    with client(mem) as c:
        c.start()
        c.send_option(n.OPT_EXPORT_NAME, name)
        assert_closed(c)


def test_export_name_open_fails_disconnects(servers, described, impl):
    """§1.3: EXPORT_NAME whose open fails → hard disconnect."""
    s = servers.get(impl, *described)
    with client(s) as c:
        c.start()
        c.send_option(n.OPT_EXPORT_NAME, b"bad")
        assert_closed(c)


def test_export_name_flags_match_info(mem):
    """§1.7: EXPORT_NAME and NBD_INFO_EXPORT carry the same flags."""
    with client(mem) as c:
        c.start()
        c.structured_reply()
        r = c.go(b"", option=n.OPT_INFO)
        info_flags = n.parse_info(r[0])[1][1]
        c.export_name(b"")
        assert c.eflags == info_flags


# --- §1.6 meta contexts --------------------------------------------------------

def meta_types(replies):
    return [(r.type, n.parse_meta(r) if r.type == n.REP_META_CONTEXT
             else r.data) for r in replies]


META_ACK = (n.REP_ACK, b"")
BASE0 = (n.REP_META_CONTEXT, (0, b"base:allocation"))
BASE1 = (n.REP_META_CONTEXT, (1, b"base:allocation"))


@pytest.mark.parametrize("sr", [False, True])
def test_list_meta_context(mem, sr):
    """§1.6: LIST_META_CONTEXT works with or without structured replies;
    ids are 0; q=0 and "base:" and "base:allocation" all list
    base:allocation; anything else is silently ignored."""
    with client(mem) as c:
        c.start()
        if sr:
            c.structured_reply()
        L = n.OPT_LIST_META_CONTEXT
        assert meta_types(c.option(L, n.meta_payload())) == [BASE0, META_ACK]
        assert meta_types(c.option(L, n.meta_payload(b"", [b"base:"]))) == \
            [BASE0, META_ACK]
        assert meta_types(c.option(L, n.meta_payload(
            b"", [b"base:allocation"]))) == [BASE0, META_ACK]
        assert meta_types(c.option(L, n.meta_payload(
            b"", [b"foo:bar", b"BASE:allocation", b"base:allocatio",
                  b"base:allocation:x", b"base"]))) == [META_ACK]
        assert meta_types(c.option(L, n.meta_payload(
            b"", [b"foo:", b"base:allocation"]))) == [BASE0, META_ACK]
        assert c.go()[-1].type == n.REP_ACK


def test_set_meta_context_before_sr_invalid(mem):
    """§1.6 rule 1: SET before structured replies → INVALID."""
    with client(mem) as c:
        c.start()
        r = c.option(n.OPT_SET_META_CONTEXT,
                     n.meta_payload(b"", [b"base:allocation"]))
        assert types(r) == [n.REP_ERR_INVALID]
        c.structured_reply()
        r = c.option(n.OPT_SET_META_CONTEXT,
                     n.meta_payload(b"", [b"base:allocation"]))
        assert meta_types(r) == [BASE1, META_ACK]


def test_set_meta_context(mem):
    """§1.6: SET selects base:allocation with id 1; "base:" does not
    select anything in SET; unknown queries are ignored."""
    with client(mem) as c:
        c.start()
        c.structured_reply()
        S = n.OPT_SET_META_CONTEXT
        assert meta_types(c.option(S, n.meta_payload(b"", [b"base:"]))) == \
            [META_ACK]
        r = c.option(S, n.meta_payload(b"", [b"foo:bar", b"base:allocation",
                                             b"qemu:dirty-bitmap:x"]))
        assert meta_types(r) == [BASE1, META_ACK]
        c.go()
        r = c.request(n.CMD_BLOCK_STATUS, 0, 0, 512)
        assert r.error == 0 and r.chunks[0].context == 1


def test_set_meta_context_empty_deselects(mem):
    """§1.6 rule 6: SET with q=0 selects nothing (the earlier selection
    is dropped), so block status fails with EINVAL (V-14)."""
    with client(mem) as c:
        c.start()
        c.structured_reply()
        S = n.OPT_SET_META_CONTEXT
        c.option(S, n.meta_payload(b"", [b"base:allocation"]))
        assert meta_types(c.option(S, n.meta_payload())) == [META_ACK]
        c.go()
        assert c.request(n.CMD_BLOCK_STATUS, 0, 0, 512).error == n.EINVAL


BAD_META_PAYLOADS = [
    ("L0", b""),                                          # rule 2
    ("L7", bytes(7)),
    ("name-only", struct.pack(">I", 0)),                  # rule 2
    ("name-overrun", struct.pack(">I", 5) + b"abcd"),     # rule 3
    ("name-nul", n.meta_payload(b"a\0b", [b"base:allocation"])),
    ("name-4097", n.meta_payload(b"a" * 4097, [])),
    ("no-count", struct.pack(">I", 1) + b"x" + b"\0\0"),  # rule 4
    ("missing-query", struct.pack(">II", 0, 1)),          # rule 7
    ("query-overrun", struct.pack(">III", 0, 1, 5) + b"base"),
    ("query-nul", n.meta_payload(b"", [b"base:allocation\0"])),
    ("query-4097", n.meta_payload(b"", [b"base:" + b"a" * 4092])),
]


@pytest.mark.parametrize("opt", [n.OPT_LIST_META_CONTEXT,
                                 n.OPT_SET_META_CONTEXT])
@pytest.mark.parametrize("label,payload", BAD_META_PAYLOADS,
                         ids=[x[0] for x in BAD_META_PAYLOADS])
def test_meta_context_malformed(mem, opt, label, payload):
    """§1.6 rules 2-4, 7: malformed meta-context payloads → INVALID and
    haggling continues."""
    with client(mem) as c:
        c.start()
        c.structured_reply()
        r = c.option(opt, payload)
        assert types(r) == [n.REP_ERR_INVALID], label
        assert meta_types(c.option(n.OPT_LIST_META_CONTEXT,
                                   n.meta_payload())) == [BASE0, META_ACK]
        assert c.go()[-1].type == n.REP_ACK


def test_set_meta_context_failed_query_forgets_selection(mem):
    """§1.6 rule 5: once the query count was read, the old selection is
    gone even though a later query fails."""
    with client(mem) as c:
        c.start()
        c.structured_reply()
        S = n.OPT_SET_META_CONTEXT
        c.option(S, n.meta_payload(b"", [b"base:allocation"]))
        bad = struct.pack(">III", 0, 1, 100) + b"x"
        assert types(c.option(S, bad)) == [n.REP_ERR_INVALID]
        c.go()
        assert c.request(n.CMD_BLOCK_STATUS, 0, 0, 512).error == n.EINVAL


def test_set_meta_context_replies_before_failure_stand(mem):
    """§1.6 rule 7: a match before the failing query was already
    replied to and stays selected."""
    with client(mem) as c:
        c.start()
        c.structured_reply()
        payload = (struct.pack(">II", 0, 2) + struct.pack(">I", 15) +
                   b"base:allocation" + struct.pack(">I", 100) + b"x")
        r = c.option(n.OPT_SET_META_CONTEXT, payload)
        assert meta_types(r)[0] == BASE1
        assert r[-1].type == n.REP_ERR_INVALID
        c.go()
        r = c.request(n.CMD_BLOCK_STATUS, 0, 0, 512)
        assert r.error == 0


@pytest.mark.parametrize("how", ["go-same", "go-other", "info-other",
                                 "info-same", "export-name-same",
                                 "export-name-other"])
def test_meta_context_export_name_h12(mem, how):
    """H-12: opening an export whose name differs from the one
    remembered by SET_META_CONTEXT drops the selection (an INFO for
    another export is enough)."""
    with client(mem) as c:
        c.start()
        c.structured_reply()
        r = c.option(n.OPT_SET_META_CONTEXT,
                     n.meta_payload(b"disk", [b"base:allocation"]))
        assert meta_types(r) == [BASE1, META_ACK]
        if how == "go-same":
            c.go(b"disk")
        elif how == "go-other":
            c.go(b"other")
        elif how == "info-other":
            c.go(b"other", option=n.OPT_INFO)
            c.go(b"disk")
        elif how == "info-same":
            c.go(b"disk", option=n.OPT_INFO)
            c.go(b"disk")
        elif how == "export-name-same":
            c.export_name(b"disk")
        else:
            c.export_name(b"other")
        want = 0 if how.endswith("same") else n.EINVAL
        r = c.request(n.CMD_BLOCK_STATUS, 0, 0, 512)
        assert r.error == want
        assert not r.simple


def test_meta_context_libnbd(mem):
    """§1.6 through libnbd: opt_list_meta_context and
    opt_set_meta_context-like negotiation via GO."""
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(mem.sock)
    try:
        seen = []
        count = h.opt_list_meta_context(lambda name: seen.append(name) or 0)
        assert count == 1 and seen == ["base:allocation"]
        h.add_meta_context("base:allocation")
        h.opt_go()
        assert h.can_meta_context("base:allocation")
        got = []
        h.block_status(512, 0, lambda ctx, off, ents, err:
                       got.append((ctx, list(ents))) or 0)
        assert got and got[0][0] == "base:allocation"
    finally:
        h.shutdown()


# --- byte-for-byte comparison ----------------------------------------------------

SCRIPT = [
    (n.OPT_LIST, b""),
    (n.OPT_LIST_META_CONTEXT, n.meta_payload()),
    (n.OPT_SET_META_CONTEXT, n.meta_payload(b"", [b"base:allocation"])),
    (n.OPT_STRUCTURED_REPLY, b""),
    (n.OPT_SET_META_CONTEXT, n.meta_payload(b"", [b"base:allocation"])),
    (n.OPT_INFO, n.info_payload(b"", [n.INFO_NAME, n.INFO_BLOCK_SIZE,
                                      n.INFO_DESCRIPTION])),
    (99, b"x"),
    (n.OPT_INFO, b"\0"),
    (n.OPT_GO, n.info_payload(b"", [n.INFO_NAME])),
]


def run_script(sock):
    out = []
    with n.Client(sock) as c:
        out.append(("greeting", c.recv_exact(18)))
        c.send_client_flags(3)
        for opt, data in SCRIPT:
            for r in c.option(opt, data):
                # Error messages are allowed to differ (beyond: nbdsrv
                # may explain the error); everything else must not.
                out.append((r.option, r.type,
                            b"" if r.is_error else r.data))
    return out


def test_handshake_bytes_match_nbdkit(servers):
    """Rules preamble: for the same command line nbdsrv's handshake
    replies equal nbdkit's byte for byte (error message text aside)."""
    mine = run_script(servers.get("nbdsrv", *MEMORY).sock)
    theirs = run_script(servers.get("nbdkit", *MEMORY).sock)
    assert mine == theirs


def test_option_error_message_text_nbdsrv(servers):
    """§1.2 (beyond): an option error reply may carry a message; when
    nbdsrv sends one it is valid UTF-8 text without NUL."""
    s = servers.get("nbdsrv", *MEMORY)
    with client(s) as c:
        c.start()
        for opt, data in ((99, b""), (n.OPT_INFO, b"\0"),
                          (n.OPT_SET_META_CONTEXT, n.meta_payload())):
            r = c.option(opt, data)
            assert r[-1].is_error
            text = r[-1].data.decode("utf-8")
            assert "\0" not in text
