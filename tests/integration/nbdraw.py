"""A small raw NBD client for conformance tests (protocol-rules.md).

It speaks the wire format directly (socket + struct) so that tests can
send what a real client library refuses to send: bad magic, truncated
option payloads, unknown commands, junk flags.  Every read has a
timeout, so a server that fails to answer makes the test fail instead
of hanging.  The client never interprets errors: it returns what came
off the wire and lets the test decide.
"""
import errno
import socket
import struct
import time

import pytest

# §1.1 greeting and flags.
NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003e889045565a9
FLAG_FIXED_NEWSTYLE = 0x1
FLAG_NO_ZEROES = 0x2
FLAG_C_FIXED_NEWSTYLE = 0x1
FLAG_C_NO_ZEROES = 0x2

# §1.3 option codes.
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

# §1.2 option reply types.
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = 0x80000001
REP_ERR_POLICY = 0x80000002
REP_ERR_INVALID = 0x80000003
REP_ERR_PLATFORM = 0x80000004
REP_ERR_TLS_REQD = 0x80000005
REP_ERR_UNKNOWN = 0x80000006
REP_ERR_SHUTDOWN = 0x80000007
REP_ERR_BLOCK_SIZE_REQD = 0x80000008
REP_ERR_TOO_BIG = 0x80000009
REP_ERR_EXT_HEADER_REQD = 0x8000000a

# §1.4 info types.
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# §1.7 transmission flags.
TF_HAS_FLAGS = 0x0001
TF_READ_ONLY = 0x0002
TF_SEND_FLUSH = 0x0004
TF_SEND_FUA = 0x0008
TF_ROTATIONAL = 0x0010
TF_SEND_TRIM = 0x0020
TF_SEND_WRITE_ZEROES = 0x0040
TF_SEND_DF = 0x0080
TF_CAN_MULTI_CONN = 0x0100
TF_SEND_RESIZE = 0x0200
TF_SEND_CACHE = 0x0400
TF_SEND_FAST_ZERO = 0x0800
TF_BLOCK_STATUS_PAYLOAD = 0x1000

# §2.1 requests.
REQUEST_MAGIC = 0x25609513
EXTENDED_REQUEST_MAGIC = 0x21e41c71
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_RESIZE = 8

CMD_FLAG_FUA = 0x01
CMD_FLAG_NO_HOLE = 0x02
CMD_FLAG_DF = 0x04
CMD_FLAG_REQ_ONE = 0x08
CMD_FLAG_FAST_ZERO = 0x10
CMD_FLAG_PAYLOAD_LEN = 0x20

# §2.2 replies.
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668e33ef
EXTENDED_REPLY_MAGIC = 0x6e8a278c
REPLY_FLAG_DONE = 0x1
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_BLOCK_STATUS_EXT = 6
REPLY_TYPE_ERROR = 0x8001
REPLY_TYPE_ERROR_OFFSET = 0x8002

STATE_HOLE = 1
STATE_ZERO = 2

# §2.5 wire errors.
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

MAX_REQUEST_SIZE = 64 * 1024 * 1024

# Upper bound on replies to one option (LIST of a huge export list,
# SET_META_CONTEXT with many queries); keeps every loop bounded.
MAX_OPTION_REPLIES = 1024
# Upper bound on chunks in one structured reply.
MAX_CHUNKS = 4096


class Disconnected(Exception):
    """The server closed the connection (EOF or reset)."""


def impl_params(nbdkit_xfail=None):
    """Values for @pytest.mark.parametrize("impl", ...).

    NBDKIT_XFAIL, when given, is the reason why Debian's nbdkit 1.32
    differs from the nbdkit 1.42 behaviour the rules document; the
    nbdkit case is then a strict xfail, so it is reported if 1.32 ever
    starts to pass."""
    kit = "nbdkit"
    if nbdkit_xfail is not None:
        kit = pytest.param("nbdkit", marks=pytest.mark.xfail(
            strict=True, reason=nbdkit_xfail))
    return ["nbdsrv", kit]


class OptionReply:
    """One option reply: the option echoed, the reply type, the data."""

    def __init__(self, option, rtype, data):
        self.option = option
        self.type = rtype
        self.data = data

    @property
    def is_error(self):
        return bool(self.type & 0x80000000)

    @property
    def final(self):
        return self.type == REP_ACK or self.is_error

    def __repr__(self):
        return "OptionReply(opt=%d, type=%#x, data=%r)" % (
            self.option, self.type, self.data[:64])


class Chunk:
    """One structured reply chunk, with its payload decoded."""

    def __init__(self, flags, ctype, cookie, payload, offset_field=None):
        self.flags = flags
        self.type = ctype
        self.cookie = cookie
        self.payload = payload
        # Extended headers only: the header's offset field.
        self.offset_field = offset_field
        self.error = None
        self.message = None
        self.offset = None
        self.data = None
        self.context = None
        self.extents = None
        self._decode()

    def _decode(self):
        p = self.payload
        if self.type in (REPLY_TYPE_ERROR, REPLY_TYPE_ERROR_OFFSET):
            assert len(p) >= 6, "ERROR chunk payload too short: %r" % p
            self.error, mlen = struct.unpack(">IH", p[:6])
            self.message = p[6:6 + mlen]
            want = 6 + mlen + (8 if self.type == REPLY_TYPE_ERROR_OFFSET
                               else 0)
            assert len(p) == want, \
                "ERROR chunk length %d, message length %d" % (len(p), mlen)
        elif self.type == REPLY_TYPE_OFFSET_DATA:
            assert len(p) >= 9, "OFFSET_DATA payload too short"
            self.offset = struct.unpack(">Q", p[:8])[0]
            self.data = p[8:]
        elif self.type == REPLY_TYPE_OFFSET_HOLE:
            assert len(p) == 12, "OFFSET_HOLE payload must be 12 bytes"
            self.offset, hole = struct.unpack(">QI", p)
            self.data = bytes(hole)
        elif self.type == REPLY_TYPE_BLOCK_STATUS:
            assert len(p) >= 12 and (len(p) - 4) % 8 == 0, \
                "BLOCK_STATUS payload length %d" % len(p)
            self.context = struct.unpack(">I", p[:4])[0]
            self.extents = [struct.unpack(">II", p[i:i + 8])
                            for i in range(4, len(p), 8)]
        elif self.type == REPLY_TYPE_BLOCK_STATUS_EXT:
            assert len(p) >= 24 and (len(p) - 8) % 16 == 0, \
                "BLOCK_STATUS_EXT payload length %d" % len(p)
            self.context, count = struct.unpack(">II", p[:8])
            self.extents = [struct.unpack(">QQ", p[i:i + 16])
                            for i in range(8, len(p), 16)]
            assert count == len(self.extents), \
                "BLOCK_STATUS_EXT count %d, %d descriptors" % (
                    count, len(self.extents))

    @property
    def done(self):
        return bool(self.flags & REPLY_FLAG_DONE)

    def __repr__(self):
        return "Chunk(flags=%#x, type=%#x, cookie=%d, len=%d)" % (
            self.flags, self.type, self.cookie, len(self.payload))


class Reply:
    """A complete reply to one request.

    simple: True for a 16-byte simple reply.  error: the wire error
    (for structured replies, the error of the first ERROR chunk, else
    0).  data: read data (simple) or the data assembled from
    OFFSET_DATA/OFFSET_HOLE chunks.  chunks: the structured chunks in
    the order received."""

    def __init__(self, cookie, simple, error, data=b"", chunks=()):
        self.cookie = cookie
        self.simple = simple
        self.error = error
        self.data = data
        self.chunks = list(chunks)

    def __repr__(self):
        return "Reply(cookie=%d, simple=%s, error=%d, chunks=%r)" % (
            self.cookie, self.simple, self.error, self.chunks)


class Client:
    """A raw NBD client connected to a Unix socket."""

    def __init__(self, path, timeout=20):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.gflags = None
        self.structured = False
        self.extended = False
        self.size = None
        self.eflags = None
        # cookie -> (command, offset, length) for replies not yet read.
        self.pending = {}

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- low level ------------------------------------------------------

    def recv_exact(self, n):
        """Read exactly N bytes; Disconnected on EOF or reset.  A
        socket.timeout propagates (the server failed to answer)."""
        buf = bytearray()
        while len(buf) < n:
            try:
                piece = self.sock.recv(min(n - len(buf), 1 << 20))
            except ConnectionResetError as e:
                raise Disconnected("reset after %d/%d bytes" %
                                   (len(buf), n)) from e
            if not piece:
                raise Disconnected("EOF after %d/%d bytes" % (len(buf), n))
            buf += piece
        return bytes(buf)

    def send(self, data):
        """Send DATA; a peer that already closed raises Disconnected."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Disconnected("send failed: %s" % e) from e

    def wait_closed(self):
        """Return True once the server has closed the connection; read
        and drop anything it still sends first.  Fails on timeout (a
        server that should have hung up but did not)."""
        for _ in range(1 << 16):
            try:
                piece = self.sock.recv(65536)
            except ConnectionResetError:
                return True
            except OSError as e:
                if e.errno == errno.ECONNRESET:
                    return True
                raise
            if not piece:
                return True
        return False

    # --- handshake --------------------------------------------------------

    def greeting(self):
        """Read NBDMAGIC, IHAVEOPT and the handshake flags."""
        magic, version, gflags = struct.unpack(">QQH", self.recv_exact(18))
        assert magic == NBDMAGIC, "bad greeting magic %#x" % magic
        assert version == IHAVEOPT, "not newstyle: %#x" % version
        self.gflags = gflags
        return gflags

    def send_client_flags(self, flags):
        self.send(struct.pack(">I", flags))

    def start(self, cflags=FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
        """Greeting plus client flags."""
        self.greeting()
        self.send_client_flags(cflags)

    def send_option(self, option, data=b"", magic=IHAVEOPT, length=None):
        """Send one option request; LENGTH overrides the length field."""
        if length is None:
            length = len(data)
        self.send(struct.pack(">QII", magic, option, length) + data)

    def read_option_reply(self):
        magic, option, rtype, length = struct.unpack(
            ">QIII", self.recv_exact(20))
        assert magic == OPT_REPLY_MAGIC, "bad option reply magic %#x" % magic
        data = self.recv_exact(length) if length else b""
        return OptionReply(option, rtype, data)

    def read_option_replies(self):
        """Read replies up to and including the final one (ACK or an
        error); returns the list."""
        replies = []
        for _ in range(MAX_OPTION_REPLIES):
            r = self.read_option_reply()
            replies.append(r)
            if r.final:
                return replies
        raise AssertionError("more than %d replies to one option"
                             % MAX_OPTION_REPLIES)

    def option(self, option, data=b""):
        """Send an option and return all its replies."""
        self.send_option(option, data)
        return self.read_option_replies()

    def extended_headers(self):
        """NBD_OPT_EXTENDED_HEADERS; on ACK every later request and
        reply uses the 32-byte headers (§6)."""
        replies = self.option(OPT_EXTENDED_HEADERS)
        if replies[-1].type == REP_ACK:
            self.extended = True
            self.structured = True
        return replies

    def structured_reply(self):
        replies = self.option(OPT_STRUCTURED_REPLY)
        if replies[-1].type == REP_ACK:
            self.structured = True
        return replies

    def go(self, name=b"", infos=(), option=OPT_GO):
        """Send GO (or INFO) and return the replies.  On a successful
        GO the export size and flags are remembered."""
        replies = self.option(option, info_payload(name, infos))
        for r in replies:
            if r.type == REP_INFO and len(r.data) >= 2 and \
               struct.unpack(">H", r.data[:2])[0] == INFO_EXPORT:
                self.size, self.eflags = struct.unpack(">QH", r.data[2:12])
        return replies

    def export_name(self, name=b"", no_zeroes=True):
        """EXPORT_NAME; read the size, flags and (unless NO_ZEROES)
        the 124 zero bytes.  Returns the padding read."""
        self.send_option(OPT_EXPORT_NAME, name)
        self.size, self.eflags = struct.unpack(">QH", self.recv_exact(10))
        return b"" if no_zeroes else self.recv_exact(124)

    def handshake(self, structured=False, meta=False, name=b"",
                  extended=False):
        """Fixed newstyle up to transmission; asserts success."""
        self.start()
        if extended:
            r = self.extended_headers()
            assert r[-1].type == REP_ACK, r
        if structured:
            r = self.structured_reply()
            assert r[-1].type == REP_ACK, r
        if meta:
            r = self.option(OPT_SET_META_CONTEXT,
                            meta_payload(name, [b"base:allocation"]))
            assert r[-1].type == REP_ACK, r
            assert r[0].type == REP_META_CONTEXT, r
        r = self.go(name)
        assert r[-1].type == REP_ACK, r
        return self

    # --- transmission -----------------------------------------------------

    def send_request(self, cmd, flags=0, cookie=None, offset=0, length=0,
                     payload=None, expect_reply=True, extended=None):
        """Send one request: compact, or extended (32 bytes, 64-bit
        length) once extended headers are on or when EXTENDED says so.
        For WRITE, PAYLOAD defaults to LENGTH zero bytes; pass b"" to
        send the header only.  Under extended headers the caller sets
        PAYLOAD_LEN in FLAGS where a payload follows (X-8)."""
        if cookie is None:
            cookie = self._next_cookie()
        if payload is None:
            payload = bytes(length) if cmd == CMD_WRITE else b""
        if extended is None:
            extended = self.extended
        if extended:
            hdr = struct.pack(">IHHQQQ", EXTENDED_REQUEST_MAGIC, flags, cmd,
                              cookie, offset, length)
        else:
            hdr = struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie,
                              offset, length)
        if expect_reply:
            self.pending[cookie] = (cmd, offset, length)
        self.send(hdr + payload)
        return cookie

    def _next_cookie(self):
        c = getattr(self, "_cookie", 0x1000) + 1
        self._cookie = c
        return c

    def read_reply(self):
        """Read one complete reply (any cookie)."""
        magic = struct.unpack(">I", self.recv_exact(4))[0]
        if self.extended:
            assert magic == EXTENDED_REPLY_MAGIC, \
                "reply magic %#x under extended headers" % magic
            return self._read_structured()
        if magic == SIMPLE_REPLY_MAGIC:
            return self._read_simple()
        assert magic == STRUCTURED_REPLY_MAGIC, "bad reply magic %#x" % magic
        return self._read_structured()

    def _read_simple(self):
        error, cookie = struct.unpack(">IQ", self.recv_exact(12))
        assert cookie in self.pending, "unexpected cookie %d" % cookie
        cmd, _, length = self.pending.pop(cookie)
        data = b""
        if cmd == CMD_READ and error == 0:
            data = self.recv_exact(length)
        return Reply(cookie, True, error, data)

    def _read_chunk(self, have_magic):
        want = EXTENDED_REPLY_MAGIC if self.extended \
            else STRUCTURED_REPLY_MAGIC
        if not have_magic:
            magic = struct.unpack(">I", self.recv_exact(4))[0]
            assert magic == want, \
                "chunk of another reply shape inside a structured " \
                "reply: %#x" % magic
        if self.extended:
            flags, ctype, cookie, offset, length = struct.unpack(
                ">HHQQQ", self.recv_exact(28))
            assert length <= MAX_REQUEST_SIZE + 4096, \
                "chunk of %d bytes" % length
            return Chunk(flags, ctype, cookie, self.recv_exact(length),
                         offset)
        flags, ctype, cookie, length = struct.unpack(
            ">HHQI", self.recv_exact(16))
        return Chunk(flags, ctype, cookie, self.recv_exact(length))

    def _read_structured(self):
        """Read chunks of one reply until DONE.  Chunks of one reply
        must be contiguous (nbdkit never interleaves; R-24)."""
        chunks = [self._read_chunk(True)]
        cookie = chunks[0].cookie
        assert cookie in self.pending, "unexpected cookie %d" % cookie
        for _ in range(MAX_CHUNKS):
            if chunks[-1].done:
                break
            c = self._read_chunk(False)
            assert c.cookie == cookie, \
                "reply %d split by a chunk of %d" % (cookie, c.cookie)
            chunks.append(c)
        else:
            raise AssertionError("more than %d chunks" % MAX_CHUNKS)
        cmd, offset, length = self.pending.pop(cookie)
        error = 0
        data = bytearray(length) if cmd == CMD_READ else bytearray()
        for c in chunks:
            if c.offset_field is not None:
                assert c.offset_field == offset, \
                    "extended header offset %d, request offset %d" % (
                        c.offset_field, offset)
            if c.error is not None and error == 0:
                error = c.error
            if c.data is not None:
                lo = c.offset - offset
                assert 0 <= lo and lo + len(c.data) <= length, \
                    "data chunk outside the request"
                data[lo:lo + len(c.data)] = c.data
        return Reply(cookie, False, error, bytes(data), chunks)

    def request(self, cmd, flags=0, offset=0, length=0, payload=None):
        """Send one request and read its reply."""
        cookie = self.send_request(cmd, flags, offset=offset,
                                   length=length, payload=payload)
        r = self.read_reply()
        assert r.cookie == cookie, "cookie %d != %d" % (r.cookie, cookie)
        return r

    def disconnect(self):
        self.send_request(CMD_DISC, expect_reply=False)


# --- option payload builders ---------------------------------------------

def info_payload(name=b"", infos=()):
    """INFO/GO payload: u32 name length, name, u16 n, n × u16."""
    return (struct.pack(">I", len(name)) + name +
            struct.pack(">H", len(infos)) +
            b"".join(struct.pack(">H", i) for i in infos))


def meta_payload(name=b"", queries=()):
    """LIST/SET_META_CONTEXT payload."""
    out = struct.pack(">I", len(name)) + name + \
        struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q)) + q
    return out


def parse_info(reply):
    """Split an NBD_REP_INFO reply into (type, decoded)."""
    itype = struct.unpack(">H", reply.data[:2])[0]
    rest = reply.data[2:]
    if itype == INFO_EXPORT:
        assert len(reply.data) == 12, "INFO_EXPORT length %d" % len(
            reply.data)
        return itype, struct.unpack(">QH", rest)
    if itype == INFO_BLOCK_SIZE:
        assert len(reply.data) == 14, "INFO_BLOCK_SIZE length %d" % len(
            reply.data)
        return itype, struct.unpack(">III", rest)
    return itype, rest


def parse_server(reply):
    """NBD_REP_SERVER data → (name, description)."""
    n = struct.unpack(">I", reply.data[:4])[0]
    assert 4 + n <= len(reply.data), "SERVER name overruns reply"
    return reply.data[4:4 + n], reply.data[4 + n:]


def parse_meta(reply):
    """NBD_REP_META_CONTEXT data → (id, name)."""
    return struct.unpack(">I", reply.data[:4])[0], reply.data[4:]


def wait_listening(path, tries=500):
    """The socket file appears at bind(), before listen(): retry the
    connection until it is accepted (bounded: TRIES × 10 ms)."""
    for _ in range(tries):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return
        except ConnectionRefusedError:
            time.sleep(0.01)
        finally:
            s.close()
    raise AssertionError("%s never accepted a connection" % path)


class ServerCache:
    """Servers shared by the tests of one module, keyed by (impl,
    args).  A server that died (for example an nbdkit abort) is
    started afresh on a new socket.  START is conftest.start_server;
    DIRECTORY holds the sockets."""

    def __init__(self, start, directory):
        self.start = start
        self.dir = directory
        self.servers = {}
        self.count = 0

    def get(self, impl, *args):
        key = (impl,) + tuple(args)
        s = self.servers.get(key)
        if s is None or not s.alive():
            self.count += 1
            sock = str(self.dir / ("s%d" % self.count))
            s = self.start(impl, args, sock)
            wait_listening(sock)
            self.servers[key] = s
        return s

    def stop_all(self):
        for s in self.servers.values():
            s.stop()
        self.servers.clear()
