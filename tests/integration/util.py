"""Helpers shared by the integration tests that drive servers through
libnbd: starting a pair of servers, waiting for them, connecting, and
asking for block status and export flags in one way everywhere.

conftest.py starts and stops the servers; nbdraw.py is the raw wire
client.  What is here sits above both and is plain functions, so a test
module imports what it uses by name.
"""
import socket
import time

import pytest

# As in the modules that import this one: without libnbd they skip.
nbd = pytest.importorskip("nbd")

# Debian's sh plugin, for tests that need a plugin written on the spot.
SH_PLUGIN = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-sh-plugin.so"

# Hang protection for a server to start accepting connections.
READY_TIMEOUT = 60

# The flags both servers must agree on for most exports.
EXPORT_FLAGS = ["get_size", "is_read_only", "is_rotational", "can_flush",
                "can_fua", "can_trim", "can_zero", "can_fast_zero",
                "can_multi_conn", "can_cache", "can_df"]


def wait_accepting(srv):
    """Wait until SRV's Unix socket accepts connections.  conftest waits
    only for the socket file, but servers bind() (creating the file)
    before they listen(): a client that connects in between gets
    ECONNREFUSED (seen with both nbdkit and nbdsrv)."""
    deadline = time.monotonic() + READY_TIMEOUT
    for _ in range(100000):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(srv.sock)
                return
            except (ConnectionRefusedError, FileNotFoundError):
                pass
        assert srv.alive(), "%s exited during startup" % srv.impl
        assert time.monotonic() < deadline, \
            "%s never accepted connections on %s" % (srv.impl, srv.sock)
        time.sleep(0.01)


def accepting(server):
    """Wrap conftest's server factory SERVER so that it returns only once
    the server accepts connections; for a module's `server` fixture."""
    def start(*args, **kw):
        srv = server(*args, **kw)
        wait_accepting(srv)
        return srv
    return start


def start_both(server, *args):
    """The same command line started as nbdsrv and as nbdkit, in that
    order."""
    return [server(*args, impl=impl) for impl in ("nbdsrv", "nbdkit")]


def write_script(directory, name, text):
    """An executable script NAME holding TEXT in DIRECTORY (a Path);
    returns its path as a string for a server command line."""
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def connect(srv, export=None):
    """A libnbd handle on SRV (on its export EXPORT if given) that asks
    for base:allocation, so block_status works on it."""
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(srv.uri if export is None else srv.uri_for(export))
    return h


def block_status(h, count, offset, flags=0):
    """The base:allocation entries (length, type, ...) of one request."""
    entries = []

    def cb(metacontext, off, e, err):
        assert metacontext == nbd.CONTEXT_BASE_ALLOCATION
        entries.extend(e)
        return 0

    h.block_status(count, offset, cb, flags)
    return entries


def export_flags(h, names=EXPORT_FLAGS):
    """NAMES (libnbd getters) mapped to what they return on H."""
    return {n: getattr(h, n)() for n in names}


def errno_of(fn):
    """Run FN; return 0 on success or the errno it failed with."""
    try:
        fn()
    except nbd.Error as e:
        return e.errnum
    return 0
