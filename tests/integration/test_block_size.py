"""Block sizes end to end (issue: beyond nbdkit, item 4): a filter's
block_size reaches the client in NBD_INFO_BLOCK_SIZE through the whole
stack, and clients that honour it (qemu, libnbd) then send only aligned
requests, which a log filter below shows.  Compared with Debian's nbdkit
on the same command line.
"""
import os
import re
import subprocess

import nbd
import pytest

from util import accepting

ENV = dict(os.environ, PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))
DEBIAN_FILTERS = "/usr/lib/x86_64-linux-gnu/nbdkit/filters"


@pytest.fixture
def server(server):
    return accepting(server)


def policy_stack(server, impl, log):
    """blocksize-policy (Debian's binary, the same for both servers)
    over Debian's log filter over the memory plugin."""
    return server("--filter=%s/nbdkit-blocksize-policy-filter.so"
                  % DEBIAN_FILTERS,
                  "--filter=%s/nbdkit-log-filter.so" % DEBIAN_FILTERS,
                  "memory", "1M", "blocksize-minimum=4096",
                  "blocksize-preferred=65536", "blocksize-maximum=1M",
                  "blocksize-error-policy=error", "logfile=%s" % log,
                  impl=impl)


def logged_requests(log):
    """(offset, count) of each data request the log filter saw."""
    text = log.read_text()
    return [(int(o, 16), int(c, 16)) for o, c in re.findall(
        r"(?:Read|Write|Zero|Trim) id=\d+ offset=(0x[0-9a-f]+) "
        r"count=(0x[0-9a-f]+)", text)]


def test_block_size_advertised(server, impl, tmp_path):
    srv = policy_stack(server, impl, tmp_path / "log")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    assert (h.get_block_size(nbd.SIZE_MINIMUM),
            h.get_block_size(nbd.SIZE_PREFERRED),
            h.get_block_size(nbd.SIZE_MAXIMUM)) == (4096, 65536, 1 << 20)
    h.shutdown()


def test_qemu_sends_aligned_requests(server, impl, tmp_path):
    """qemu-io writes 512 bytes at 512: qemu reads and writes the whole
    4 KiB block around it, and the layers below see nothing smaller."""
    log = tmp_path / "log"
    srv = policy_stack(server, impl, log)
    proc = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 0x33 512 512",
         "-c", "read -P 0x33 512 512", "-c", "read -P 0 0 512", srv.uri],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV,
        timeout=120, text=True)
    assert proc.returncode == 0 and "failed" not in proc.stdout, \
        proc.stdout
    srv.stop()
    seen = logged_requests(log)
    assert seen, "the log filter saw no request"
    assert all(o % 4096 == 0 and c % 4096 == 0 for o, c in seen), seen


def test_unaligned_request_refused_by_policy(server, impl, tmp_path):
    """A client that ignores the sizes gets EINVAL from the policy."""
    srv = policy_stack(server, impl, tmp_path / "log")
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_uri(srv.uri)
    try:
        h.pread(512, 512)
        raise AssertionError("an unaligned read succeeded")
    except nbd.Error as e:
        assert e.errnum == 22
    h.shutdown()
