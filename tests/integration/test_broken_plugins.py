"""Plugins that advertise features they have no callback for.

A plugin's can_* answers and its callbacks can disagree: can_fua says
"emulate" without a .flush, can_write says yes without a .pwrite.  The
server must fail those requests the way nbdkit does (EINVAL for a
missing .flush or .trim, EROFS for a missing .pwrite, zero emulated)
and keep serving; it used to call a NULL pointer.  Found by
tests/fuzz/fuzz-handshake (corpus input regress-fua-without-flush).
"""
import errno
import os
import subprocess

import nbd
import pytest

INCLUDE = os.path.join(os.path.dirname(__file__), "..", "..", "include")

# Reads zeroes; every can_* says yes; only the callbacks in HAVE exist.
C_LIAR = r"""
#include <string.h>
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static int handle;
static void *liar_open (int readonly) { return &handle; }
static int64_t liar_get_size (void *h) { return 1048576; }
static int yes (void *h) { return 1; }
static int emulate (void *h) { return NBDKIT_FUA_EMULATE; }
static int liar_pread (void *h, void *buf, uint32_t count, uint64_t offset,
                       uint32_t flags)
{
  memset (buf, 0, count);
  return 0;
}
#ifdef HAVE_PWRITE
static int liar_pwrite (void *h, const void *buf, uint32_t count,
                        uint64_t offset, uint32_t flags)
{
  return 0;
}
#endif

static struct nbdkit_plugin plugin = {
  .name = "liar",
  .open = liar_open,
  .get_size = liar_get_size,
  .pread = liar_pread,
#ifdef HAVE_PWRITE
  .pwrite = liar_pwrite,
#endif
  .can_write = yes,
  .can_flush = yes,
  .can_trim = yes,
  .can_zero = yes,
  .can_fua = emulate,
};

NBDKIT_REGISTER_PLUGIN (plugin)
"""


@pytest.fixture(scope="module")
def liars(tmp_path_factory):
    """Build two liar plugins: with and without .pwrite."""
    d = tmp_path_factory.mktemp("liar")
    src = d / "liar.c"
    src.write_text(C_LIAR)
    out = {}
    for name, defs in (("pwrite", ["-DHAVE_PWRITE"]), ("none", [])):
        so = d / ("nbdkit-liar-%s-plugin.so" % name)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(so), str(src),
                        "-I", INCLUDE] + defs, check=True, timeout=120)
        out[name] = str(so)
    return out


def connect(srv):
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    return h


def expect_errno(fn, want):
    with pytest.raises(nbd.Error) as exc:
        fn()
    # libnbd gives the errno's name ("EPERM").
    assert exc.value.errno == errno.errorcode[want], (
        "wanted %s, got %s" % (errno.errorcode[want], exc.value))


def test_fua_write_without_flush(server, impl, liars):
    """can_fua emulate, no .flush: a FUA write fails with EINVAL, a plain
    write works, and the connection and server carry on."""
    srv = server(liars["pwrite"], impl=impl)
    h = connect(srv)
    assert h.can_fua()
    h.pwrite(b"x" * 512, 0)
    expect_errno(lambda: h.pwrite(b"x" * 512, 0, nbd.CMD_FLAG_FUA),
                 errno.EINVAL)
    expect_errno(h.flush, errno.EINVAL)
    h.pwrite(b"y" * 512, 512)
    h.shutdown()
    # A fresh client is served as well.
    h2 = connect(srv)
    assert h2.pread(512, 0) == bytes(512)
    h2.shutdown()
    assert srv.alive()


def test_write_trim_zero_without_callbacks(server, impl, liars):
    """can_write, can_trim and can_zero with only .pread: writes are
    refused with EPERM (EROFS), trim with EINVAL, zero falls back to
    writing and so is refused too; reads keep working."""
    srv = server(liars["none"], impl=impl)
    h = connect(srv)
    expect_errno(lambda: h.pwrite(b"x" * 512, 0), errno.EPERM)
    expect_errno(lambda: h.trim(512, 0), errno.EINVAL)
    with pytest.raises(nbd.Error):
        h.zero(512, 0)
    assert h.pread(512, 0) == bytes(512)
    h.shutdown()
    assert srv.alive()
