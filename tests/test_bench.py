"""The benchmarks keep working: each runs here in a tiny size (no
figure is judged; `make bench` is where they are measured)."""
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.environ.get("NBDSRV_BUILD", os.path.join(ROOT, "build"))


def test_holes_bench_runs(tmp_path):
    out = tmp_path / "holes.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "holes.py"),
                    "--size", "32M", "--nbdsrv",
                    os.path.join(BUILD, "nbdsrv"), "--json", str(out)],
                   check=True, timeout=600, stdout=subprocess.DEVNULL)
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 9
    # nbdsrv answers the holes of a full read with hole chunks: it sends
    # no more than a tenth of the disk plus headers.
    ours = [r for r in rows if r["server"] == "nbdsrv"
            and r["client"] == "nbdcopy --no-extents"]
    assert ours[0]["wire_bytes"] < 32 * 1024 * 1024 // 5


# One server of each kind bench.py starts: nbdsrv and nbdkit over the
# memory plugin, a filter stack, the file plugin, qemu-nbd, nbd-server,
# and both servers over TLS.
TINY_SERVERS = ("nbdsrv-memory", "nbdkit-memory", "nbdsrv-3pass",
                "nbdsrv-file", "qemu-nbd-threads", "nbd-server",
                "nbdsrv-tls", "nbdkit-tls")


def test_bench_runs_every_kind_of_server(tmp_path):
    """bench.py end to end in one round of 0.2 s runs: each server
    starts, serves fio, is measured and stopped; the limits program
    compiles and runs; the report and the targets are built."""
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench.py"),
                    "--quick", "--repeats", "1", "--runtime", "0.2",
                    "--rbd", "no", "--nbdsrv", BUILD,
                    "--servers", ",".join(TINY_SERVERS),
                    "--cases", "4k-randread-qd32,4k-randread-qd32-tls",
                    "--json", str(out)],
                   check=True, timeout=600, stdout=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    for key in TINY_SERVERS:
        case = ("4k-randread-qd32-tls" if key.endswith("-tls")
                else "4k-randread-qd32")
        assert report["servers"][key]["unavailable"] is None, key
        assert report["servers"][key]["errors"] == [], key
        row = report["summary"][key][case]
        assert row["value"] > 0 and row["cpu_us_per_req"] > 0, key
    # The C limits program streams; the Python fallback cannot.
    limits = report["limits"]["median"]
    assert limits["unix_mib_s"] > 0 and limits["tcp_mib_s"] > 0
    measured = {t["target"]: t["measured"] for t in report["targets"]}
    assert measured["CPU/req 4k-randread-qd32 nbdsrv-memory/nbdkit-memory"] \
        > 0
    assert "| 4k randread QD32" in report["table_markdown"]


def test_idle_clients_bench_runs(tmp_path):
    """bench/idle_clients.py with 100 clients instead of 10,000: its C
    client compiles, fills, stalls and closes, beside qemu-nbd."""
    out = tmp_path / "idle.json"
    subprocess.run([sys.executable,
                    os.path.join(ROOT, "bench", "idle_clients.py"),
                    "--clients", "100", "--fio-seconds", "1",
                    "--fio-runs", "1",
                    "--servers", "nbdsrv,qemu-nbd", "--nbdsrv", BUILD,
                    "--json", str(out)],
                   check=True, timeout=600, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    assert set(report) == {"nbdsrv", "qemu-nbd 7.2"}
    for row in report.values():
        assert row["held"] == 100 and row["alive"]
        assert row["iops_alone"] > 0 and row["iops_with"] > 0
        assert row["new_client_s"] is not None
    assert report["nbdsrv"]["threads_after"] == report["nbdsrv"]["threads_base"]


def test_rbd_bench_imports():
    """bench/rbd_bench.py needs a throw-away Ceph cluster and a minute
    and a half, so `make check` only loads it (tests/integration/
    test_rbd.py starts such clusters); every tool it needs is here."""
    code = ("import sys; sys.path.insert(0, 'bench'); import rbd_bench; "
            "print(rbd_bench.unavailable())")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "None"
