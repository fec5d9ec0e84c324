"""--metrics: live counters in the Prometheus text format, scraped over
HTTP (TCP and a Unix socket) and parsed with Debian's
python3-prometheus-client parser.  The counters must equal what the
clients did: libnbd requests of every kind, fio's I/Os while it runs,
connections, refusals and failed handshakes.  nbdkit has only a stats
file written at exit, so nothing here is compared with it.
"""
import http.client
import json
import os
import socket
import subprocess
import threading

import nbd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import BUILD, NBDSRV, start_server
from nbdraw import Client, wait_listening

KiB = 1024
MiB = 1024 * KiB
ENV = dict(os.environ, PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def scrape(where):
    """{(name, frozenset(labels)): value} from one GET /metrics."""
    if where.startswith("unix:"):
        conn = UnixHTTPConnection(where[5:])
    else:
        host, port = where.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/plain")
    text = resp.read().decode()
    conn.close()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m, name, **labels):
    return m[(name, frozenset(labels.items()))]


def value_or_zero(m, name, **labels):
    """A series that exists only once something was counted (a request
    to an export not yet opened)."""
    return m.get((name, frozenset(labels.items())), 0)


def wait_closed_all(where):
    """Wait until the server has freed every connection (bounded)."""
    for _ in range(500):
        m = scrape(where)
        if value(m, "nbdsrv_connections_open") == 0:
            return m
    raise AssertionError("connections stay open")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def start(tmp_path):
    started = []

    def go(*args, metrics=None):
        sock = str(tmp_path / ("s%d" % len(started)))
        where = metrics or "unix:" + str(tmp_path / ("m%d" % len(started)))
        srv = start_server("nbdsrv", ["--metrics=" + where, *args], sock)
        wait_listening(sock)
        started.append(srv)
        return srv, where
    yield go
    for s in started:
        s.stop()


def test_counts_equal_what_the_client_did(start):
    srv, where = start("memory", "16M")
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(srv.uri)
    for i in range(10):
        h.pwrite(b"w" * 4096, i * 4096)
    for i in range(20):
        h.pread(8192, i * 8192)
    for _ in range(3):
        h.flush()
    h.trim(65536, 0)
    h.trim(4096, MiB)
    h.zero(12345, 2 * MiB)
    h.cache(4096, 0)
    h.block_status(MiB, 0, lambda *a: 0)
    h.set_strict_mode(0)
    with pytest.raises(nbd.Error):
        h.pread(512, 16 * MiB)                # past the end: EINVAL
    m = scrape(where)
    assert value(m, "nbdsrv_connections_open") == 1
    req = lambda c: value(m, "nbdsrv_requests_total", command=c, export="")
    byt = lambda c: value(m, "nbdsrv_bytes_total", command=c, export="")
    assert (req("write"), byt("write")) == (10, 40960)
    assert (req("read"), byt("read")) == (21, 20 * 8192)
    assert req("flush") == 3
    assert (req("trim"), byt("trim")) == (2, 65536 + 4096)
    assert (req("write_zeroes"), byt("write_zeroes")) == (1, 12345)
    assert req("cache") == 1 and req("block_status") == 1
    assert value(m, "nbdsrv_request_errors_total", error="EINVAL") == 1
    assert value(m, "nbdsrv_request_errors_total", error="EIO") == 0
    assert value(m, "nbdsrv_requests_in_flight") == 0
    assert value(m, "nbdsrv_request_duration_seconds_count",
                 command="read") == 21
    assert value(m, "nbdsrv_request_duration_seconds_bucket",
                 command="read", le="+Inf") == 21
    assert value(m, "nbdsrv_plugin_call_seconds_total", command="read") > 0
    h.shutdown()


def test_scrapes_while_fio_runs(start):
    """Scrapes during a bounded fio run over TCP metrics; at the end the
    request counts equal fio's I/O counts."""
    srv, where = start("memory", "64M",
                       metrics="127.0.0.1:%d" % free_port())
    out = []
    fio = threading.Thread(target=lambda: out.append(subprocess.run(
        ["fio", "--name=m", "--ioengine=nbd", "--uri=" + srv.uri,
         "--rw=randrw", "--bs=4k", "--iodepth=8", "--size=64M",
         "--time_based", "--runtime=2", "--output-format=json"],
        stdout=subprocess.PIPE, check=True, env=ENV, timeout=120,
        text=True).stdout))
    fio.start()
    seen = []
    while fio.is_alive() and len(seen) < 200:
        seen.append(value_or_zero(scrape(where), "nbdsrv_requests_total",
                                  command="read", export=""))
    fio.join(120)
    # fio's nbd engine says "connected" on stdout before the JSON.
    job = json.loads(out[0][out[0].index("{"):])["jobs"][0]
    m = scrape(where)
    assert value(m, "nbdsrv_requests_total", command="read", export="") \
        == job["read"]["total_ios"]
    assert value(m, "nbdsrv_requests_total", command="write", export="") \
        == job["write"]["total_ios"]
    assert value(m, "nbdsrv_bytes_total", command="write", export="") \
        == job["write"]["io_bytes"]
    assert seen == sorted(seen) and len(seen) >= 2, seen


def test_connections_refusals_and_handshakes(start):
    srv, where = start("--max-connections=1", "memory", "1M")
    # The readiness probes sit in the listen queue and may be accepted or
    # refused after the first scrape.  The server takes connections in
    # order, so once one full client got in, every probe before it has
    # been counted: count from there (bounded retries while a probe
    # still holds the one slot).
    for _ in range(500):
        h0 = nbd.NBD()
        try:
            h0.connect_uri(srv.uri)
            break
        except nbd.Error:
            wait_closed_all(where)
    else:
        raise AssertionError("no client ever got in")
    h0.shutdown()
    refused0 = value(wait_closed_all(where),
                     "nbdsrv_connections_refused_total",
                     reason="max-connections")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h2 = nbd.NBD()
    with pytest.raises(nbd.Error):
        h2.connect_uri(srv.uri)               # refused: one at a time
    h.shutdown()
    wait_closed_all(where)
    with Client(srv.sock) as c:               # flags never offered
        c.greeting()
        c.send_client_flags(0x80)
        assert c.wait_closed()
    wait_closed_all(where)
    with Client(srv.sock) as c:               # gone during the handshake
        c.greeting()
    wait_closed_all(where)
    with Client(srv.sock) as c:
        c.start()
        c.send_option(2)                      # NBD_OPT_ABORT
        c.read_option_reply()
    m = wait_closed_all(where)
    assert value(m, "nbdsrv_connections_refused_total",
                 reason="max-connections") == refused0 + 1
    fails = lambda r: value(m, "nbdsrv_handshakes_failed_total", reason=r)
    assert fails("bad-flags") == 1 and fails("abort") == 1
    assert fails("eof") >= 1                  # and the readiness probe
    assert value(m, "nbdsrv_connections_total") >= 4


def test_exports_are_labelled(start):
    plugin = os.path.join(BUILD, "tests", "plugins",
                          "nbdkit-exports-plugin.so")
    srv, where = start(plugin)
    for name in ("alpha", "gamma", "gamma"):
        h = nbd.NBD()
        h.connect_uri(srv.uri_for(name))
        h.pread(512, 0)
        h.shutdown()
    m = scrape(where)
    assert value(m, "nbdsrv_requests_total", command="read",
                 export="alpha") == 1
    assert value(m, "nbdsrv_requests_total", command="read",
                 export="gamma") == 2


@pytest.mark.parametrize("where,why", [
    ("nonsense", "give ADDR:PORT"),
    ("unix:", "empty or too long"),
    ("no.such.host.invalid:9", "--metrics=no.such.host.invalid:9"),
])
def test_bad_metrics_address(tmp_path, where, why):
    proc = subprocess.run([NBDSRV, "-f", "-U", str(tmp_path / "s"),
                           "--metrics=" + where, "memory", "1M"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert why in proc.stderr
    assert not os.path.exists(tmp_path / "s")
