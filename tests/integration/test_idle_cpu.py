"""An idle connected client costs the server no CPU (issue 11).

A server that polls for the next request before blocking must stop
once requests stop coming: the test keeps a client connected and busy,
then idle, and reads the server's CPU time from /proc/PID/stat.  It
judges CPU ticks only, never a speed, so a slow machine cannot fail it.
"""
import os
import time

import pytest

from util import connect

nbd = pytest.importorskip("nbd")

CLK_TCK = os.sysconf("SC_CLK_TCK")
BUSY_REQUESTS = 2000            # enough to warm any adaptive poll
IDLE_SECONDS = 1.0
# Tick-based accounting may charge a whole tick (10 ms at 100 Hz) to a
# thread that runs for a few µs just as the tick fires; a thread that
# polls would be charged about IDLE_SECONDS * CLK_TCK ticks.
IDLE_TICKS_MAX = 1


def cpu_ticks(pid):
    """utime + stime of every thread of PID, in clock ticks."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_cpu_ticks_sees_a_busy_process():
    """The reader below counts CPU time at all: 0.2 s of our own."""
    before = cpu_ticks(os.getpid())
    start = time.process_time()
    while time.process_time() - start < 0.2:
        pass
    assert cpu_ticks(os.getpid()) - before >= 0.1 * CLK_TCK


def test_idle_client_costs_no_cpu(server, impl):
    srv = server("memory", "16M", impl=impl)
    h = connect(srv)
    try:
        for i in range(BUSY_REQUESTS):
            h.pread(4096, (i * 4096) % (16 << 20))
        time.sleep(0.1)         # the last reply leaves, any poll ends
        before = cpu_ticks(srv.pid)
        time.sleep(IDLE_SECONDS)
        idle = cpu_ticks(srv.pid) - before
        assert srv.alive()
        # The connection is still usable: it was idle, not dropped.
        assert h.pread(4096, 0) == bytes(4096)
    finally:
        h.shutdown()
    assert idle <= IDLE_TICKS_MAX, (
        "%s used %d clock ticks (%.0f ms) over %.1f s with one idle "
        "client connected" % (impl, idle, idle * 1000 / CLK_TCK,
                              IDLE_SECONDS))
