"""Request validation: the V-1..V-16 check order of protocol-rules.md
§4.1, its pinned consequences, payload skipping (§4.2, R-9) and the
host errno → wire error mapping (§4.4).

One table (CASES) lists every (command, failing check) pair with the
wire error the first failing check must produce.  It is walked twice:
with the raw client (every case) and with libnbd in non-strict mode
(the cases libnbd can express).  After every error the raw client
sends a good READ, so a server that lost its place in the stream (for
example by not skipping a rejected WRITE payload) fails the case.
"""
import errno
import os
import struct
import subprocess
import textwrap

import pytest

import nbdraw as n
from conftest import start_server
from util import SH_PLUGIN, write_script

nbd = pytest.importorskip("nbd")

SIZE = 1024 * 1024
BIG = 128 * 1024 * 1024
MAXREQ = n.MAX_REQUEST_SIZE

# --- test plugins -------------------------------------------------------

# No flush, trim, zero, cache or FUA: the V-11 and V-13 export.
SH_MINIMAL = r"""#!/bin/sh
case "$1" in
  get_size) echo 1048576 ;;
  can_write) exit 0 ;;
  can_flush|can_trim|can_zero|can_fast_zero|can_extents) exit 3 ;;
  can_multi_conn|is_rotational) exit 3 ;;
  can_fua|can_cache) echo none ;;
  pread) head -c "$3" /dev/zero ;;
  pwrite) cat >/dev/null ;;
  *) exit 2 ;;
esac
"""

# Zeroing without fast zeroing: the V-15 export.
SH_NO_FAST_ZERO = r"""#!/bin/sh
case "$1" in
  get_size) echo 1048576 ;;
  can_write|can_zero) exit 0 ;;
  can_flush|can_trim|can_fast_zero|can_extents) exit 3 ;;
  can_fua|can_cache) echo none ;;
  pread) head -c "$3" /dev/zero ;;
  pwrite) cat >/dev/null ;;
  zero) exit 0 ;;
  *) exit 2 ;;
esac
"""

# Every data callback fails with the errno named by the export name
# (the handle is the export name); export "" succeeds.  The sh plugin
# understands these names only: EPERM ENOMEM EINVAL ENOSPC EROFS EDQUOT
# EFBIG ESHUTDOWN ENOTSUP EOPNOTSUPP EOVERFLOW; anything it cannot
# parse is EIO.
SH_ERRNO = r"""#!/bin/sh
fail () {
  if [ -n "$1" ]; then echo "$1 injected by the test plugin" >&2; exit 1; fi
}
case "$1" in
  open) echo "$3" ;;
  get_size) echo 1048576 ;;
  can_write|can_flush|can_trim|can_zero|can_fast_zero) exit 0 ;;
  can_extents|can_multi_conn|is_rotational) exit 3 ;;
  can_fua|can_cache) echo native ;;
  pread) fail "$2"; head -c "$3" /dev/zero ;;
  pwrite) cat >/dev/null; fail "$2" ;;
  flush|trim|zero|cache) fail "$2" ;;
  *) exit 2 ;;
esac
"""

# A C plugin for errnos the sh plugin cannot name ("anything else →
# EINVAL", §4.4).  pwrite fails with the errno whose number is the
# export name, via nbdkit_set_error.
C_ERRNO = r"""
#define NBDKIT_API_VERSION 2
#include <stdlib.h>
#include <stdint.h>
#include <nbdkit-plugin.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS

static int errno_to_fail;

static void *
errno_open (int readonly)
{
  errno_to_fail = atoi (nbdkit_export_name ());
  return &errno_to_fail;
}

static int64_t
errno_get_size (void *h)
{
  return 1048576;
}

static int
errno_pread (void *h, void *buf, uint32_t count, uint64_t offset,
             uint32_t flags)
{
  return 0;
}

static int
errno_pwrite (void *h, const void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  nbdkit_set_error (*(int *) h);
  return -1;
}

static struct nbdkit_plugin plugin = {
  .name = "testerrno",
  .open = errno_open,
  .get_size = errno_get_size,
  .pread = errno_pread,
  .pwrite = errno_pwrite,
};

NBDKIT_REGISTER_PLUGIN (plugin)
"""

INCLUDE = os.path.join(os.path.dirname(__file__), "..", "..", "include")


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    """Write the sh scripts (and build the C plugin) once per module;
    map name → plugin arguments for the server command line."""
    d = tmp_path_factory.mktemp("plugins")
    out = {}
    for name, text in (("minimal", SH_MINIMAL),
                       ("nofastzero", SH_NO_FAST_ZERO),
                       ("errno", SH_ERRNO)):
        out[name] = (SH_PLUGIN, write_script(d, name + ".sh", text))
    src = d / "testerrno.c"
    src.write_text(C_ERRNO)
    so = d / "nbdkit-testerrno-plugin.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(so), str(src),
                    "-I", INCLUDE], check=True, timeout=120)
    out["cerrno"] = (str(so),)
    return out


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    cache = n.ServerCache(start_server, tmp_path_factory.mktemp("srv"))
    yield cache
    cache.stop_all()


# Export kinds used by the table.
def export_args(kind, plugins):
    return {
        "rw": ("memory", "size=1M"),
        "ro": ("-r", "memory", "size=1M"),
        "big": ("memory", "size=128M"),
        "min": plugins["minimal"],
        "nofz": plugins["nofastzero"],
    }[kind]


# --- the table ------------------------------------------------------------

R, W, F, T, C, Z, B = (n.CMD_READ, n.CMD_WRITE, n.CMD_FLUSH, n.CMD_TRIM,
                       n.CMD_CACHE, n.CMD_WRITE_ZEROES, n.CMD_BLOCK_STATUS)
ALL = (R, W, F, T, C, Z, B)
RANGED = (R, W, T, C, Z, B)
NAMES = {R: "READ", W: "WRITE", F: "FLUSH", T: "TRIM", C: "CACHE",
         Z: "WZ", B: "BS"}
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = (
    n.CMD_FLAG_FUA, n.CMD_FLAG_NO_HOLE, n.CMD_FLAG_DF, n.CMD_FLAG_REQ_ONE,
    n.CMD_FLAG_FAST_ZERO)


class Case:
    """One request and the wire error it must get.

    mode: "plain" (no structured replies), "sr" (structured replies),
    "meta" (structured replies + base:allocation selected)."""

    def __init__(self, rule, export, mode, cmd, flags, offset, length,
                 want, note=""):
        self.rule = rule
        self.export = export
        self.mode = mode
        self.cmd = cmd
        self.flags = flags
        self.offset = offset
        self.length = length
        self.want = want
        self.id = "%s-%s-%s-%s-f%x-o%d-l%d%s" % (
            rule, export, mode, NAMES.get(cmd, "cmd%d" % cmd), flags,
            offset, length, "-" + note if note else "")


def good_range(cmd):
    return (0, 0) if cmd == F else (0, 512)


def mode_for(cmd):
    """The least negotiation under which CMD is otherwise valid."""
    return "meta" if cmd == B else "plain"


def build_cases():
    cases = []
    add = cases.append

    # Baseline: every command succeeds on its own, so an error in a
    # row below is caused by the one thing that row changes.
    for cmd in ALL:
        add(Case("ok", "rw", mode_for(cmd), cmd, 0, *good_range(cmd), 0))
    for cmd in (R, F, C, B, W, T, Z):
        # FUA is accepted on every command when SEND_FUA is advertised.
        add(Case("ok", "rw", mode_for(cmd), cmd, FUA, *good_range(cmd), 0,
                 "fua"))
    add(Case("ok", "rw", "sr", R, DF, 0, 512, 0, "df"))
    add(Case("ok", "rw", "meta", B, REQ_ONE, 0, 512, 0, "reqone"))
    add(Case("ok", "rw", "plain", Z, NO_HOLE | FAST_ZERO | FUA, 0, 512, 0,
             "wzflags"))
    add(Case("ok", "rw", "plain", R, 0, SIZE - 512, 512, 0, "lastblock"))
    add(Case("ok", "rw", "plain", R, 0, 0, SIZE, 0, "whole"))
    add(Case("ok", "big", "plain", R, 0, 0, MAXREQ, 0, "64MiB"))
    add(Case("ok", "ro", "plain", R, 0, 0, 512, 0))
    add(Case("ok", "min", "plain", R, 0, 0, 512, 0))
    add(Case("ok", "min", "plain", W, 0, 0, 512, 0))

    # V-1: read-only export, and V-1 beats V-2 and the flag checks.
    for cmd in (W, T, Z):
        add(Case("V-1", "ro", "plain", cmd, 0, 0, 512, n.EPERM))
        add(Case("V-1", "ro", "plain", cmd, 0, SIZE, 512, n.EPERM,
                 "beats-V-2"))
        add(Case("V-1", "ro", "plain", cmd, 0, 0, 0, n.EPERM, "zerolen"))
        add(Case("V-1", "ro", "plain", cmd, 0x20, 0, 512, n.EPERM,
                 "beats-V-5"))
        add(Case("V-1", "ro", "plain", cmd, DF, 0, 512, n.EPERM,
                 "beats-V-8"))
    add(Case("V-1", "ro", "plain", W, 0, 0, MAXREQ + 1, n.EPERM,
             "beats-V-12"))

    # V-2: out of range; zero length is out of range.
    for cmd in RANGED:
        want = n.ENOSPC if cmd in (W, Z) else n.EINVAL
        mode = mode_for(cmd)
        for off, length, note in ((SIZE, 1, "at-end"),
                                  (0, SIZE + 1, "past-end"),
                                  (SIZE - 511, 512, "straddle"),
                                  (SIZE + 4096, 512, "beyond"),
                                  (2 ** 64 - 512, 1024, "wrap"),
                                  (0, 0, "zerolen"),
                                  (SIZE, 0, "zerolen-at-end")):
            add(Case("V-2", "rw", mode, cmd, 0, off, length, want, note))
        # V-2 comes before the flag checks.
        add(Case("V-2", "rw", mode, cmd, 0x20, SIZE, 512, want,
                 "beats-V-5"))
        add(Case("V-2", "min", mode, cmd, FUA, SIZE, 512, want,
                 "beats-V-11"))
    add(Case("V-2", "ro", "plain", R, 0, SIZE, 512, n.EINVAL, "ro-read"))
    add(Case("V-2", "rw", "plain", B, 0, SIZE, 512, n.EINVAL,
             "beats-V-14"))
    add(Case("V-2", "min", "plain", T, 0, SIZE, 512, n.EINVAL,
             "beats-V-13"))
    # An oversize READ that is also out of range: V-2 before V-12.
    add(Case("V-2", "rw", "plain", R, 0, 0, MAXREQ + 1, n.EINVAL,
             "beats-V-12"))
    add(Case("V-2", "rw", "plain", W, 0, 0, MAXREQ + 1, n.ENOSPC,
             "beats-V-12"))

    # V-3: FLUSH carries no range; checked before its capability.
    for off, length in ((1, 0), (0, 1), (SIZE * 2, 512)):
        add(Case("V-3", "rw", "plain", F, 0, off, length, n.EINVAL))
        add(Case("V-3", "min", "plain", F, 0, off, length, n.EINVAL,
                 "beats-V-13"))

    # V-4: unknown commands (8 is RESIZE).
    for cmd in (8, 9, 10, 0x100, 0xffff):
        add(Case("V-4", "rw", "plain", cmd, 0, 0, 512, n.EINVAL))
    add(Case("V-4", "rw", "plain", 9, FUA, 0, 0, n.EINVAL, "fua-zerolen"))

    # V-5: unknown flag bits (bit 5 is PAYLOAD_LEN, not valid in compact
    # mode).
    for cmd in ALL:
        for flag in (0x20, 0x40, 0x80, 0x100, 0x8000):
            add(Case("V-5", "rw", mode_for(cmd), cmd, flag,
                     *good_range(cmd), n.EINVAL))

    # V-6 .. V-10: known flags on the wrong command.
    for cmd in ALL:
        rng = good_range(cmd)
        if cmd != Z:
            add(Case("V-6", "rw", mode_for(cmd), cmd, NO_HOLE, *rng,
                     n.EINVAL))
            add(Case("V-7", "rw", mode_for(cmd), cmd, FAST_ZERO, *rng,
                     n.EINVAL))
        if cmd != R:
            add(Case("V-8", "rw", "meta", cmd, DF, *rng, n.EINVAL))
        if cmd != B:
            add(Case("V-10", "rw", "meta", cmd, REQ_ONE, *rng, n.EINVAL))
    add(Case("V-9", "rw", "plain", R, DF, 0, 512, n.EINVAL))

    # V-11: FUA without SEND_FUA.
    add(Case("V-11", "min", "plain", R, FUA, 0, 512, n.EINVAL))
    add(Case("V-11", "min", "plain", W, FUA, 0, 512, n.EINVAL))
    add(Case("V-11", "min", "meta", B, FUA, 0, 512, n.EINVAL))

    # V-12: too big but in range.
    add(Case("V-12", "big", "plain", R, 0, 0, MAXREQ + 1, n.ENOMEM))
    add(Case("V-12", "big", "sr", R, 0, 0, 65 * 1024 * 1024, n.ENOMEM))
    add(Case("V-12", "big", "plain", W, 0, 0, 65 * 1024 * 1024, n.ENOMEM,
             "payload-skipped"))
    # The flag checks come first.
    add(Case("V-12", "big", "plain", W, DF, 0, MAXREQ + 1, n.EINVAL,
             "V-8-first"))

    # V-13: capability not advertised.  WRITE_ZEROES is left out: a
    # plugin's can_zero is a boolean (false means "emulate"), so only a
    # filter or a read-only export (where V-1 comes first) can hide it.
    for cmd in (F, T, C):
        add(Case("V-13", "min", "plain", cmd, 0, *good_range(cmd),
                 n.EINVAL))

    # V-14: block status without structured replies / without context.
    add(Case("V-14", "rw", "plain", B, 0, 0, 512, n.EINVAL, "no-sr"))
    add(Case("V-14", "rw", "sr", B, 0, 0, 512, n.EINVAL, "no-context"))
    add(Case("V-14", "rw", "sr", B, REQ_ONE, 0, 512, n.EINVAL,
             "no-context-reqone"))
    return cases


CASES = build_cases()


def raw_client(servers, plugins, impl, case):
    s = servers.get(impl, *export_args(case.export, plugins))
    c = n.Client(s.sock)
    c.handshake(structured=case.mode in ("sr", "meta"),
                meta=case.mode == "meta")
    return c


# The transmission flag whose absence a V-11/V-13 case relies on.
NEEDS_MISSING = {F: n.TF_SEND_FLUSH, T: n.TF_SEND_TRIM,
                 Z: n.TF_SEND_WRITE_ZEROES, C: n.TF_SEND_CACHE}


def check_preconditions(c, case):
    if case.rule == "V-11":
        assert not c.eflags & n.TF_SEND_FUA, hex(c.eflags)
    if case.rule == "V-13":
        assert not c.eflags & NEEDS_MISSING[case.cmd], hex(c.eflags)
    if case.export == "ro":
        assert c.eflags & n.TF_READ_ONLY, hex(c.eflags)
    if case.export == "rw" and case.flags & FUA:
        assert c.eflags & n.TF_SEND_FUA, hex(c.eflags)


def check_in_sync(c):
    """A good READ after an error proves the stream is still framed."""
    r = c.request(n.CMD_READ, 0, 0, 512)
    assert r.error == 0 and len(r.data) == 512, r


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validation_raw(servers, plugins, impl, case):
    """V-1..V-14 through the raw client, one request per connection."""
    with raw_client(servers, plugins, impl, case) as c:
        check_preconditions(c, case)
        payload = None
        if case.cmd == n.CMD_WRITE:
            payload = bytes(case.length)
        r = c.request(case.cmd, case.flags, case.offset, case.length,
                      payload)
        assert r.error == case.want, \
            "%s: wire error %d, want %d" % (case.id, r.error, case.want)
        if case.mode != "plain" and case.cmd in (n.CMD_READ,
                                                 n.CMD_BLOCK_STATUS):
            # READ/BLOCK_STATUS never get a simple reply with SR.
            assert not r.simple, "%s: simple reply under SR" % case.id
        check_in_sync(c)
        c.disconnect()
        assert c.wait_closed()


# --- the same table through libnbd ----------------------------------------

def close_handle(h):
    try:
        h.shutdown()
    except nbd.Error:
        pass


def libnbd_can_send(case):
    if case.cmd not in ALL:
        return False
    if case.cmd in (R, W) and case.length > MAXREQ:
        return False            # libnbd refuses with ERANGE itself
    if case.cmd == F and (case.offset or case.length):
        return False
    return True


LIBNBD_CASES = [c for c in CASES if libnbd_can_send(c)]


def libnbd_request(h, case):
    """Issue CASE through libnbd; return the wire error (0 = ok)."""
    try:
        if case.cmd == R:
            h.pread(case.length, case.offset, case.flags)
        elif case.cmd == W:
            h.pwrite(bytes(case.length), case.offset, case.flags)
        elif case.cmd == F:
            h.flush(case.flags)
        elif case.cmd == T:
            h.trim(case.length, case.offset, case.flags)
        elif case.cmd == C:
            h.cache(case.length, case.offset, case.flags)
        elif case.cmd == Z:
            h.zero(case.length, case.offset, case.flags)
        else:
            h.block_status(case.length, case.offset,
                           lambda *a: 0, case.flags)
    except nbd.Error as e:
        return e.errnum
    return 0


@pytest.mark.parametrize("case", LIBNBD_CASES,
                         ids=[c.id for c in LIBNBD_CASES])
def test_validation_libnbd(servers, plugins, impl, case):
    """The table again, through libnbd with its own checks off."""
    s = servers.get(impl, *export_args(case.export, plugins))
    h = nbd.NBD()
    h.set_strict_mode(0)
    if case.mode == "plain":
        h.set_request_structured_replies(False)
    if case.mode == "meta":
        h.add_meta_context("base:allocation")
    h.connect_unix(s.sock)
    try:
        got = libnbd_request(h, case)
        # libnbd reports the wire error as the equal host errno.
        assert got == case.want, \
            "%s: errno %s, want %s" % (case.id, got, case.want)
        assert h.pread(512, 0) == bytes(512)
    finally:
        close_handle(h)


# --- §4.1 consequences and R-9 beyond the table ----------------------------

def test_write_payload_skipped_then_next_works(servers, plugins, impl):
    """V-12 / R-9: a 65 MiB WRITE is rejected with ENOMEM, its payload is
    skipped, and pipelined requests behind it are answered."""
    s = servers.get(impl, *export_args("big", plugins))
    with n.Client(s.sock) as c:
        c.handshake()
        pattern = bytes(range(256)) * 2
        big = 65 * 1024 * 1024
        # Pipeline: bad write, good write, read back.
        c1 = c.send_request(n.CMD_WRITE, offset=0, length=big,
                            payload=b"\xff" * big)
        c2 = c.send_request(n.CMD_WRITE, offset=4096, length=512,
                            payload=pattern)
        replies = {}
        for _ in range(2):
            r = c.read_reply()
            replies[r.cookie] = r
        assert replies[c1].error == n.ENOMEM
        assert replies[c2].error == 0
        r = c.request(n.CMD_READ, 0, 4096, 512)
        assert r.error == 0 and r.data == pattern
        # The rejected payload was not written.
        r = c.request(n.CMD_READ, 0, 0, 512)
        assert r.data != b"\xff" * 512


@pytest.mark.parametrize("length", [2 * MAXREQ + 1, 0xffffffff])
def test_huge_write_disconnects(servers, plugins, impl, length):
    """R-9: a WRITE whose payload is above 2 × MAX_REQUEST_SIZE is not
    skipped: the server hangs up instead of replying."""
    s = servers.get(impl, *export_args("big", plugins))
    with n.Client(s.sock) as c:
        c.handshake()
        c.send_request(n.CMD_WRITE, offset=0, length=length, payload=b"")
        # Start sending the payload; the server may hang up meanwhile.
        try:
            c.send(bytes(1 << 20))
        except n.Disconnected:
            pass
        with pytest.raises(n.Disconnected):
            r = c.read_reply()
            pytest.fail("got a reply instead of a disconnect: %r" % (r,))
    # The server itself is still serving.
    with n.Client(s.sock) as c:
        c.handshake()
        check_in_sync(c)


@pytest.mark.parametrize("flags,offset,length", [
    (0, 0, 0),
    (0xffff, 0x123456789, 0xdeadbeef),
    (n.CMD_FLAG_FUA, 2 ** 64 - 1, 1),
])
def test_disc_with_junk_fields(servers, plugins, impl, flags, offset,
                               length):
    """R-5: DISC closes cleanly whatever its flags, offset and length;
    an earlier request is still answered (successfully, or with
    ESHUTDOWN if a worker only got to it after the DISC: R-12); no
    reply to DISC itself."""
    s = servers.get(impl, *export_args("rw", plugins))
    with n.Client(s.sock) as c:
        c.handshake()
        cookie = c.send_request(n.CMD_READ, offset=0, length=512)
        c.send_request(n.CMD_DISC, flags, offset=offset, length=length,
                       expect_reply=False)
        r = c.read_reply()
        assert r.cookie == cookie and r.error in (0, n.ESHUTDOWN)
        if r.error == 0:
            assert r.data == bytes(512)
        assert c.wait_closed()


def test_bad_request_magic_disconnects(servers, plugins, impl):
    """R-4: a request with a wrong magic is a hard disconnect."""
    s = servers.get(impl, *export_args("rw", plugins))
    with n.Client(s.sock) as c:
        c.handshake()
        c.send(struct.pack(">IHHQQI", 0x25609514, 0, n.CMD_READ, 1, 0, 512))
        with pytest.raises(n.Disconnected):
            c.read_reply()


# V-15 is beyond nbdkit: Debian's nbdkit 1.32 aborts the whole server
# process on this request (an assertion in its backend), so it runs
# against nbdsrv only.
def test_fast_zero_not_advertised_nbdsrv(servers, plugins):
    """V-15: FAST_ZERO on WRITE_ZEROES to an export without
    SEND_FAST_ZERO → EINVAL, and the server keeps serving."""
    s = servers.get("nbdsrv", *export_args("nofz", plugins))
    with n.Client(s.sock) as c:
        c.handshake()
        assert c.eflags & n.TF_SEND_WRITE_ZEROES
        assert not c.eflags & n.TF_SEND_FAST_ZERO
        r = c.request(n.CMD_WRITE_ZEROES, FAST_ZERO, 0, 512)
        assert r.error == n.EINVAL
        r = c.request(n.CMD_WRITE_ZEROES, 0, 0, 512)
        assert r.error == 0
        check_in_sync(c)
        # V-15 runs after V-1..V-14: out of range still says ENOSPC.
        r = c.request(n.CMD_WRITE_ZEROES, FAST_ZERO, SIZE, 512)
        assert r.error == n.ENOSPC
    assert s.alive()
    with n.Client(s.sock) as c:
        c.handshake()
        check_in_sync(c)


def test_fast_zero_not_advertised_libnbd_nbdsrv(servers, plugins):
    """V-15 through libnbd (nbdsrv only, see above)."""
    s = servers.get("nbdsrv", *export_args("nofz", plugins))
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_unix(s.sock)
    try:
        assert not h.can_fast_zero()
        with pytest.raises(nbd.Error) as e:
            h.zero(512, 0, nbd.CMD_FLAG_FAST_ZERO)
        assert e.value.errnum == errno.EINVAL
        h.zero(512, 0)
    finally:
        close_handle(h)


# --- V-16 ---------------------------------------------------------------

SH_BLOCKSIZE = r"""#!/bin/sh
case "$1" in
  get_size) echo 1048576 ;;
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
def blocksize_plugin(tmp_path_factory):
    return (SH_PLUGIN, write_script(tmp_path_factory.mktemp("bs"),
                                    "blocksize.sh", SH_BLOCKSIZE))


def test_unaligned_ok_unless_block_size_requested(servers, blocksize_plugin,
                                                  impl):
    """V-16 is off unless the client asked for NBD_INFO_BLOCK_SIZE: an
    unaligned request then succeeds, as in nbdkit's core."""
    s = servers.get(impl, *blocksize_plugin)
    with n.Client(s.sock) as c:
        c.start()
        r = c.go(b"", [])
        assert r[-1].type == n.REP_ACK
        assert c.request(n.CMD_READ, 0, 1, 1).error == 0
        assert c.request(n.CMD_WRITE, 0, 513, 100).error == 0


def test_unaligned_when_block_size_requested_nbdsrv(servers,
                                                    blocksize_plugin):
    """V-16 (beyond, optional in nbdsrv): after the client asked for the
    block size, unaligned requests are either served or rejected with
    EINVAL — never another error, never a disconnect — and aligned ones
    always work."""
    s = servers.get("nbdsrv", *blocksize_plugin)
    with n.Client(s.sock) as c:
        c.start()
        r = c.go(b"", [n.INFO_BLOCK_SIZE])
        assert r[-1].type == n.REP_ACK
        sizes = [n.parse_info(x)[1] for x in r if x.type == n.REP_INFO and
                 n.parse_info(x)[0] == n.INFO_BLOCK_SIZE]
        assert sizes and sizes[0][0] == 512
        assert c.request(n.CMD_READ, 0, 1, 1).error in (0, n.EINVAL)
        assert c.request(n.CMD_WRITE, 0, 513, 100).error in (0, n.EINVAL)
        assert c.request(n.CMD_READ, 0, 512, 512).error == 0


# --- §4.4 errno mapping -----------------------------------------------------

# (export name = host errno the plugin fails with, command, flags,
# expected wire error)
ERRNO_CASES = [
    ("EPERM", W, 0, n.EPERM),
    ("EROFS", W, 0, n.EPERM),
    ("EROFS", T, 0, n.EPERM),
    ("EIO", W, 0, n.EIO),
    ("EIO", R, 0, n.EIO),
    ("ENOMEM", W, 0, n.ENOMEM),
    ("ENOSPC", W, 0, n.ENOSPC),
    ("EDQUOT", W, 0, n.ENOSPC),
    ("EFBIG", W, 0, n.ENOSPC),
    ("EFBIG", Z, 0, n.ENOSPC),
    ("ESHUTDOWN", W, 0, n.ESHUTDOWN),
    ("ESHUTDOWN", F, 0, n.ESHUTDOWN),
    ("EINVAL", W, 0, n.EINVAL),
    ("ENOTSUP", W, 0, n.EINVAL),
    ("EOPNOTSUPP", T, 0, n.EINVAL),
    ("ENOTSUP", Z, FAST_ZERO, n.ENOTSUP),
    ("EOPNOTSUPP", Z, FAST_ZERO, n.ENOTSUP),
    ("EOVERFLOW", R, 0, n.EINVAL),
    ("EOVERFLOW", W, 0, n.EINVAL),
    ("EOVERFLOW", R, DF, n.EOVERFLOW),
    ("ENOSPC", C, 0, n.ENOSPC),
    ("EPERM", F, FUA, n.EPERM),
]


@pytest.mark.parametrize("name,cmd,flags,want", ERRNO_CASES,
                         ids=["%s-%s-f%x" % (e, NAMES[c], f)
                              for e, c, f, _ in ERRNO_CASES])
def test_errno_mapping(servers, plugins, impl, name, cmd, flags, want):
    """§4.4: a plugin failure with host errno NAME reaches the wire as
    WANT (the flags of the request decide ENOTSUP and EOVERFLOW)."""
    s = servers.get(impl, *plugins["errno"])
    with n.Client(s.sock) as c:
        c.handshake(structured=True, name=name.encode())
        rng = good_range(cmd)
        r = c.request(cmd, flags, rng[0], rng[1])
        assert r.error == want, "%s: got %d want %d" % (name, r.error, want)
        if cmd == R:
            assert not r.simple


@pytest.mark.parametrize("host", [errno.EBADF, errno.EAGAIN, errno.EXDEV,
                                  errno.ENOENT, errno.EACCES])
def test_errno_mapping_other(servers, plugins, impl, host):
    """§4.4: any host errno not in the table is EINVAL on the wire."""
    s = servers.get(impl, *plugins["cerrno"])
    with n.Client(s.sock) as c:
        c.handshake(name=str(host).encode())
        r = c.request(n.CMD_WRITE, 0, 0, 512)
        assert r.error == n.EINVAL


@pytest.mark.parametrize("host,want", [(errno.EROFS, n.EPERM),
                                       (errno.EDQUOT, n.ENOSPC),
                                       (errno.ESHUTDOWN, n.ESHUTDOWN),
                                       (errno.ENOTSUP, n.EINVAL),
                                       (errno.EOVERFLOW, n.EINVAL)])
def test_errno_mapping_c_plugin(servers, plugins, impl, host, want):
    """§4.4 via nbdkit_set_error in a C plugin."""
    s = servers.get(impl, *plugins["cerrno"])
    h = nbd.NBD()
    h.set_export_name(str(host))
    h.connect_unix(s.sock)
    try:
        with pytest.raises(nbd.Error) as e:
            h.pwrite(bytes(512), 0)
        assert e.value.errnum == want
    finally:
        close_handle(h)
