"""Thread models: what overlap of plugin calls the server allows.

The probe plugin (tests/plugins/threadmodel.c, one build per model)
counts its preads in and out around a short sleep and reports the
highest overlap it saw, process-wide and within one handle, through a
read of its first 4 KiB.  Each test runs against nbdsrv and Debian's
nbdkit, which load the same .so by path.

"Must not overlap" results are exact.  "Must overlap" results depend on
scheduling, so those tests retry a bounded number of rounds until the
overlap shows up; a correct server shows it in the first round.
"""
import os
import subprocess
import threading
import time

import nbd
import pytest

from conftest import BINARIES, BUILD

TEST_PLUGINDIR = os.path.join(BUILD, "tests", "plugins")
MODELS = ["serialize_connections", "serialize_all_requests",
          "serialize_requests", "parallel"]
STATS = 4096            # the plugin's statistics block at offset 0
CHUNK = 4096
ROUNDS = 5              # bounded retries for "must overlap" checks
JOIN_TIMEOUT = 60       # hang protection only
POLL_TIMEOUT_MS = 1000
MAX_POLLS = 1000


def tm_plugin(model):
    path = os.path.join(TEST_PLUGINDIR, "nbdkit-tm-%s-plugin.so"
                        % model.replace("_", "-"))
    assert os.path.exists(path), "test plugin not built: %s" % path
    return path


def stats(h):
    """The plugin's counters, as a dict of str -> str."""
    text = h.pread(STATS, 0).rstrip(b"\0").decode()
    return dict(kv.split("=", 1) for kv in text.split())


def counters(h):
    s = stats(h)
    return {k: int(v) for k, v in s.items() if k != "model"}


def wait_all(h, cookies):
    pending = list(cookies)
    deadline = time.monotonic() + JOIN_TIMEOUT
    for _ in range(MAX_POLLS):
        pending = [c for c in pending if not h.aio_command_completed(c)]
        if not pending:
            return
        assert time.monotonic() < deadline, \
            "%d reads still in flight" % len(pending)
        h.poll(POLL_TIMEOUT_MS)
    pytest.fail("%d reads still in flight" % len(pending))


def burst(h, n):
    """N reads in flight at once on one connection, then wait for all."""
    bufs = [nbd.Buffer(CHUNK) for _ in range(n)]
    cookies = [h.aio_pread(bufs[i], STATS + i * CHUNK) for i in range(n)]
    wait_all(h, cookies)


def bursts_in_threads(handles, n):
    """A burst on every handle at the same time, one thread each."""
    errors = []

    def run(h):
        try:
            burst(h, n)
        except Exception as exc:        # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
        assert not t.is_alive(), "a burst of reads did not finish"
    assert not errors, errors


def connect(s):
    h = nbd.NBD()
    h.connect_uri(s.uri)
    return h


def dump_plugin(impl, *args):
    out = subprocess.run([BINARIES[impl], "--dump-plugin"] + list(args),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         timeout=60, check=True).stdout.decode()
    return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)


@pytest.mark.parametrize("model", MODELS)
def test_dump_plugin_thread_model(impl, model):
    d = dump_plugin(impl, tm_plugin(model))
    assert d["max_thread_model"] == model
    assert d["thread_model"] == model
    assert d["has_thread_model"] == "1"


@pytest.mark.parametrize("model", MODELS[:3])
def test_dump_plugin_lowered_by_callback(request, impl, model):
    """.thread_model runs after the configuration; the line
    thread_model= shows what it chose, max_thread_model= the macro."""
    d = dump_plugin(impl, tm_plugin("parallel"), "lower=" + model)
    assert d["max_thread_model"] == "parallel"
    assert d["thread_model"] == model


def test_dump_plugin_cannot_raise(impl):
    """Asking for a looser model than THREAD_MODEL is ignored."""
    d = dump_plugin(impl, tm_plugin("serialize_requests"), "lower=parallel")
    assert d["thread_model"] == "serialize_requests"


def test_serialize_connections(server, impl):
    s = server(tm_plugin("serialize_connections"), impl=impl)
    a = connect(s)
    burst(a, 8)
    # A second client is accepted by the kernel but not served: its
    # handshake waits, and the plugin never opens a second handle.
    b = nbd.NBD()
    connected = threading.Event()
    failed = []

    def connect_b():
        try:
            b.connect_uri(s.uri)
            connected.set()
        except nbd.Error as exc:
            failed.append(exc)

    t = threading.Thread(target=connect_b)
    t.start()
    try:
        for i in range(10):
            a.pread(CHUNK, STATS + i * CHUNK)
        c = counters(a)
        assert c["opens"] == 1 and c["max_open"] == 1, c
        assert not connected.is_set(), \
            "a second client completed its handshake while the first " \
            "was connected"
        assert c["max_active"] == 1, c
    finally:
        a.shutdown()
        t.join(JOIN_TIMEOUT)
    assert not t.is_alive(), "the second client was never served"
    assert not failed, failed
    assert connected.is_set()
    burst(b, 8)
    c = counters(b)
    b.shutdown()
    assert c["opens"] == 2 and c["max_open"] == 1, c
    assert c["max_active"] == 1 and c["max_active_handle"] == 1, c


def test_serialize_all_requests(server, impl):
    s = server(tm_plugin("serialize_all_requests"), impl=impl)
    hs = [connect(s) for _ in range(3)]
    try:
        bursts_in_threads(hs, 8)
        c = counters(hs[0])
        assert c["calls"] == 24, c
        assert c["max_open"] == 3, c
        assert c["max_active"] == 1, c
    finally:
        for h in hs:
            h.shutdown()


def test_serialize_requests(server, impl):
    """One call at a time per connection, but connections overlap."""
    s = server(tm_plugin("serialize_requests"), impl=impl)
    hs = [connect(s) for _ in range(3)]
    try:
        for _ in range(ROUNDS):
            bursts_in_threads(hs, 8)
            c = counters(hs[0])
            assert c["max_active_handle"] == 1, c
            if c["max_active"] > 1:
                break
        assert c["max_active"] > 1, \
            "connections never overlapped in %d rounds: %s" % (ROUNDS, c)
    finally:
        for h in hs:
            h.shutdown()


def test_parallel(server, impl):
    """Several requests of one connection run in the plugin at once."""
    s = server(tm_plugin("parallel"), impl=impl)
    h = connect(s)
    try:
        for _ in range(ROUNDS):
            burst(h, 16)
            c = counters(h)
            if c["max_active_handle"] > 1:
                break
        assert c["max_active_handle"] > 1, \
            "requests never overlapped in %d rounds: %s" % (ROUNDS, c)
    finally:
        h.shutdown()


def test_parallel_lowered_to_serialize_requests(request, server, impl):
    """.thread_model lowering PARALLEL is honoured at run time."""
    s = server(tm_plugin("parallel"), "lower=serialize_requests", impl=impl)
    hs = [connect(s) for _ in range(2)]
    try:
        bursts_in_threads(hs, 16)
        c = counters(hs[0])
        assert c["max_active_handle"] == 1, c
    finally:
        for h in hs:
            h.shutdown()


def test_parallel_lowered_to_serialize_all_requests(request, server, impl):
    s = server(tm_plugin("parallel"), "lower=serialize_all_requests",
               impl=impl)
    hs = [connect(s) for _ in range(2)]
    try:
        bursts_in_threads(hs, 8)
        c = counters(hs[0])
        assert c["max_active"] == 1, c
    finally:
        for h in hs:
            h.shutdown()


def test_parallel_lowered_to_serialize_connections(request, server, impl):
    s = server(tm_plugin("parallel"), "lower=serialize_connections",
               impl=impl)
    a = connect(s)
    burst(a, 8)
    c = counters(a)
    a.shutdown()
    assert c["max_active_handle"] == 1, c
    b = connect(s)
    c = counters(b)
    b.shutdown()
    assert c["max_open"] == 1, c
