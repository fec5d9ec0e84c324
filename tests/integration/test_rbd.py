"""The rbd plugin against a real Ceph cluster (ceph_cluster.py, started
once per session by conftest's `ceph` fixture), driven by real clients:
qemu-img, nbdcopy, fio, nbdinfo and libnbd.  Images are small and
sparse so the whole module costs seconds once the cluster is up.
"""
import hashlib
import itertools
import json
import os
import signal
import subprocess
import time

import nbd
import pytest

from ceph_cluster import POOL
from conftest import NBDSRV, server_env
from util import accepting, block_status, connect

# nbdsh, nbdcopy's helpers and fio find python3 or libnbd through PATH.
ENV = dict(os.environ, PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))

# Hang protection for one client command or a failing start-up, not a
# speed requirement.
CMD_TIMEOUT = 300

MiB = 1 << 20
OBJECT = 4 * MiB              # rbd's default object size

_names = itertools.count()


@pytest.fixture
def server(server):
    return accepting(server)


def new_image(cluster, size="16M", namespace=None):
    """A fresh image on CLUSTER; returns its name."""
    name = "t%d" % next(_names)
    spec = "/".join(x for x in (POOL, namespace, name) if x)
    cluster.rbd("create", "--size", size, spec)
    return name


def rbd_server(server, cluster, *args):
    return server("rbd", "conf=" + cluster.conf, *args)


def run(cmd, check=True, cwd=None, input=None):
    proc = subprocess.run(cmd, input=input, capture_output=True, env=ENV,
                          cwd=cwd, timeout=CMD_TIMEOUT)
    if check:
        assert proc.returncode == 0, (
            "%s exited with %d\nstdout:\n%s\nstderr:\n%s"
            % (cmd, proc.returncode, proc.stdout.decode(errors="replace"),
               proc.stderr.decode(errors="replace")))
    return proc


def make_source(path, size):
    """A raw file of SIZE: random data with a zero megabyte in the
    middle and at the end, so holes travel through the copies too."""
    data = bytearray(os.urandom(size))
    data[size // 2:size // 2 + MiB] = bytes(MiB)
    data[size - MiB:] = bytes(MiB)
    path.write_bytes(data)
    return bytes(data)


# ------------------------------------------------------------ clients

def test_qemu_img_convert_round_trip(server, ceph, tmp_path):
    name = new_image(ceph, "12M")
    src = tmp_path / "src.raw"
    make_source(src, 12 * MiB)
    s = rbd_server(server, ceph, "image=" + name)
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src),
         s.uri])
    back = tmp_path / "back.raw"
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri, str(back)])
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src),
         str(back)])
    # And straight against the export, by its name this time.
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src),
         s.uri_for(name)])
    # Same bytes as the cluster's own export of the image.
    ceph.rbd("export", "%s/%s" % (POOL, name), str(tmp_path / "rbd.raw"))
    assert (tmp_path / "rbd.raw").read_bytes() == src.read_bytes()


def test_nbdcopy_checksums(server, ceph, tmp_path):
    name = new_image(ceph, "16M")
    src = tmp_path / "src.raw"
    data = make_source(src, 16 * MiB)
    s = rbd_server(server, ceph, "image=" + name)
    run(["nbdcopy", "--requests=16", str(src), s.uri])
    out = run(["nbdcopy", s.uri, "-"]).stdout
    assert hashlib.sha256(out).hexdigest() == \
        hashlib.sha256(data).hexdigest()


def test_fio_verify(server, ceph, tmp_path):
    name = new_image(ceph, "32M")
    s = rbd_server(server, ceph, "image=" + name)
    proc = run(["fio", "--name=verify", "--ioengine=nbd", "--uri=" + s.uri,
                "--rw=randwrite", "--verify=crc32c", "--size=16M",
                "--bs=4k", "--iodepth=16", "--numjobs=1",
                "--runtime=300", "--verify_state_save=0",
                "--output-format=json"], cwd=str(tmp_path))
    text = proc.stdout.decode()
    job = json.loads(text[text.index("{"):])["jobs"][0]
    assert job["error"] == 0, job
    written = job["write"]["io_bytes"]
    assert written == 16 * MiB
    assert job["read"]["io_bytes"] == written
    for word in ("verify failed", "bad magic", "bad header"):
        assert word not in proc.stderr.decode(), proc.stderr


# ----------------------------------------------------------- features

def test_flags(server, ceph):
    name = new_image(ceph)
    s = rbd_server(server, ceph, "image=" + name)
    h = connect(s)
    assert h.get_size() == 16 * MiB
    assert not h.is_read_only()
    for flag in ("can_flush", "can_trim", "can_zero", "can_fast_zero",
                 "can_fua", "can_multi_conn", "can_df"):
        assert getattr(h, flag)(), flag
    assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)


def test_write_zero_trim(server, ceph):
    name = new_image(ceph)
    s = rbd_server(server, ceph, "image=" + name)
    h = connect(s)
    h.pwrite(b"\xaa" * (3 * MiB), MiB, nbd.CMD_FLAG_FUA)
    assert h.pread(MiB, MiB) == b"\xaa" * MiB
    h.zero(4096, MiB + 4096, nbd.CMD_FLAG_FAST_ZERO)
    assert h.pread(8192, MiB) == b"\xaa" * 4096 + bytes(4096)
    h.zero(MiB, 2 * MiB)
    assert h.pread(MiB, 2 * MiB) == bytes(MiB)
    h.flush()
    assert h.pread(MiB, 3 * MiB) == b"\xaa" * MiB


def test_map_after_discard(server, ceph):
    """Whole objects trimmed read as holes: from the object map with
    fast-diff, whole-object granularity."""
    name = new_image(ceph, "16M")
    s = rbd_server(server, ceph, "image=" + name)
    h = connect(s)
    assert block_status(h, 16 * MiB, 0) == [16 * MiB, 3]
    h.pwrite(os.urandom(3 * OBJECT), 0)
    h.flush()
    h.trim(OBJECT, OBJECT)
    h.flush()
    assert block_status(h, 16 * MiB, 0) == [
        OBJECT, 0, OBJECT, 3, OBJECT, 0, OBJECT, 3]
    assert h.pread(OBJECT, OBJECT) == bytes(OBJECT)
    out = run(["nbdinfo", "--map", "--json", s.uri]).stdout
    extents = [(e["offset"], e["length"], e["type"])
               for e in json.loads(out)]
    assert extents == [(0, OBJECT, 0), (OBJECT, OBJECT, 3),
                       (2 * OBJECT, OBJECT, 0), (3 * OBJECT, OBJECT, 3)]


def test_snapshot_read_only(server, ceph):
    name = new_image(ceph)
    s = rbd_server(server, ceph, "image=" + name)
    h = connect(s)
    h.pwrite(b"A" * MiB, 0)
    h.flush()
    ceph.rbd("snap", "create", "%s/%s@one" % (POOL, name))
    h.pwrite(b"B" * MiB, 0)
    h.flush()
    snap = rbd_server(server, ceph, "image=" + name, "snap=one")
    hs = connect(snap)
    assert hs.is_read_only()
    assert hs.pread(MiB, 0) == b"A" * MiB
    # The export name NAME@SNAP picks a snapshot on any server.
    hn = connect(s, name + "@one")
    assert hn.is_read_only()
    assert hn.pread(MiB, 0) == b"A" * MiB
    assert h.pread(MiB, 0) == b"B" * MiB
    # The head stays writable next to its snapshot.
    assert not h.is_read_only()


def test_two_servers_one_image(server, ceph):
    """Two processes on one image, as two hosts would: a write made and
    flushed through one is read through the other."""
    name = new_image(ceph)
    a = rbd_server(server, ceph, "image=" + name)
    b = rbd_server(server, ceph, "image=" + name)
    ha, hb = connect(a), connect(b)
    assert hb.pread(4096, 0) == bytes(4096)
    ha.pwrite(b"1" * 4096, 0)
    ha.flush()
    assert hb.pread(4096, 0) == b"1" * 4096
    hb.pwrite(b"2" * 4096, 8192)
    hb.flush()
    assert ha.pread(4096, 8192) == b"2" * 4096
    assert ha.pread(4096, 0) == b"1" * 4096
    # A large read asks block status first (to send holes as holes):
    # an object the other server just created must not read as one.
    assert hb.pread(MiB, 2 * OBJECT) == bytes(MiB)
    ha.pwrite(b"3" * MiB, 2 * OBJECT)
    ha.flush()
    assert hb.pread(MiB, 2 * OBJECT) == b"3" * MiB
    assert block_status(hb, OBJECT, 2 * OBJECT) == [OBJECT, 0]


def test_multi_conn_one_server(server, ceph, tmp_path):
    """can_multi_conn: a flush on one connection makes the writes of
    another connection to the same server durable, as an independent
    client of the cluster (rbd export) sees."""
    name = new_image(ceph, "1M")
    s = rbd_server(server, ceph, "image=" + name)
    h1, h2 = connect(s), connect(s)
    assert h1.can_multi_conn()
    h1.pwrite(b"m" * 65536, 0)
    h2.flush()
    out = tmp_path / "export.raw"
    ceph.rbd("export", "%s/%s" % (POOL, name), str(out))
    assert out.read_bytes()[:65537] == b"m" * 65536 + b"\0"


def test_list_exports(server, ceph):
    names = sorted(new_image(ceph, "1M") for _ in range(3))
    s = rbd_server(server, ceph, "image=" + names[0])
    out = run(["nbdinfo", "--list", "--json", s.uri]).stdout
    listed = {e["export-name"]: e for e in json.loads(out)["exports"]}
    for n in names:
        assert n in listed
        assert listed[n]["export-size"] == MiB
    assert set(listed) == set(ceph.rbd("ls", POOL).split())
    # The export name picks the image; the empty name is image=.
    h = connect(s, names[2])
    h.pwrite(b"x" * 512, 0)
    h.flush()
    assert connect(s).pread(512, 0) == bytes(512)
    assert connect(s, names[2]).pread(512, 0) == b"x" * 512


def test_unknown_export(server, ceph):
    s = rbd_server(server, ceph)
    with pytest.raises(nbd.Error):
        connect(s, "no-such-image")
    # Without image= the empty name cannot pick one.
    with pytest.raises(nbd.Error):
        connect(s)


def test_namespace(server, ceph):
    ceph.rbd("namespace", "create", "%s/ns1" % POOL)
    inside = new_image(ceph, "2M", namespace="ns1")
    s = rbd_server(server, ceph, "namespace=ns1")
    out = run(["nbdinfo", "--list", "--json", s.uri]).stdout
    assert [e["export-name"] for e in json.loads(out)["exports"]] == [inside]
    h = connect(s, inside)
    assert h.get_size() == 2 * MiB
    h.pwrite(b"n" * 4096, 0)
    h.flush()
    spec = "%s/ns1/%s" % (POOL, inside)
    assert inside not in ceph.rbd("ls", POOL).split()
    assert "2 MiB" in ceph.rbd("info", spec)


def test_background(ceph, tmp_path):
    """Without -f the server forks after connecting to the cluster,
    and librados's threads stay behind in the parent: the plugin must
    connect again in the child (after_fork) to serve."""
    name = new_image(ceph, "1M")
    sock, pidfile = str(tmp_path / "bg.sock"), str(tmp_path / "bg.pid")
    proc = subprocess.run([NBDSRV, "-P", pidfile, "-U", sock, "rbd",
                           "conf=" + ceph.conf, "image=" + name],
                          capture_output=True, text=True,
                          env=server_env("nbdsrv"), timeout=CMD_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    pid = int(open(pidfile).read())
    try:
        h = nbd.NBD()
        h.connect_uri("nbd+unix:///?socket=" + sock)
        h.pwrite(b"b" * 65536, 0)
        h.flush()
        assert h.pread(65536, 0) == b"b" * 65536
        h.shutdown()
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(CMD_TIMEOUT * 10):
        if not os.path.exists("/proc/%d" % pid):
            break
        time.sleep(0.1)
    assert not os.path.exists("/proc/%d" % pid), "daemon did not exit"
    out = tmp_path / "export.raw"
    ceph.rbd("export", "%s/%s" % (POOL, name), str(out))
    assert out.read_bytes()[:65536] == b"b" * 65536


# ------------------------------------------------------ bad start-ups

def start_fails(cluster, tmp_path, *args):
    """Start nbdsrv's rbd plugin with ARGS (conf= for CLUSTER first,
    unless ARGS has one), expecting it to fail at start-up; returns its
    stderr lines."""
    sock = str(tmp_path / "fail.sock")
    if not any(a.startswith("conf=") for a in args):
        args = ("conf=" + cluster.conf,) + args
    proc = subprocess.run([NBDSRV, "-f", "-U", sock, "rbd"] + list(args),
                          capture_output=True, text=True,
                          env=server_env("nbdsrv"), timeout=CMD_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, (proc.returncode, lines)
    assert not os.path.exists(sock)
    return lines


@pytest.mark.parametrize("args,named", [
    (["pool=nopool", "image=x"], "pool 'nopool'"),
    (["image=noimage"], "image 'noimage'"),
    (["image=IMG", "snap=nosnap"], "snapshot 'nosnap'"),
    (["namespace=nons"], "namespace 'nons'"),
    (["image=IMG", "keyring=/nonexistent/keyring"], "/nonexistent/keyring"),
    (["image=IMG", "conf=/nonexistent/ceph.conf"], "/nonexistent/ceph.conf"),
    (["rados-option=no_such_option=1"], "no_such_option"),
    (["rados-option=novalue"], "rados-option=novalue"),
])
def test_bad_start(ceph, tmp_path, args, named):
    """One line naming what is missing, exit status 1."""
    image = new_image(ceph, "1M")
    lines = start_fails(ceph, tmp_path,
                        *[a.replace("IMG", image) for a in args])
    assert len(lines) == 1, lines
    assert named in lines[0], lines


def test_no_monitor(ceph, tmp_path):
    """A monitor address nobody answers on: bounded by timeout=."""
    lines = start_fails(ceph, tmp_path, "mon_host=v1:127.0.0.1:9",
                        "timeout=2")
    assert len(lines) == 1 and "monitors" in lines[0], lines


# -------------------------------------------------------------- cephx

def test_cephx_user_keyring(server, ceph_cephx, tmp_path):
    c = ceph_cephx
    name = new_image(c, "4M")
    s = rbd_server(server, c, "id=nbdtest", "keyring=" + c.user_keyring,
                   "image=" + name)
    h = connect(s)
    h.pwrite(b"k" * 4096, 0)
    h.flush()
    assert h.pread(4096, 0) == b"k" * 4096
    # user= is the same parameter, and "client." may be spelled out.
    s2 = rbd_server(server, c, "user=client.nbdtest",
                    "keyring=" + c.user_keyring, "image=" + name)
    assert connect(s2).pread(4096, 0) == b"k" * 4096


def test_cephx_no_key(ceph_cephx, tmp_path):
    """The user exists but no keyring has its key."""
    c = ceph_cephx
    lines = start_fails(c, tmp_path, "id=nbdtest", "timeout=10")
    assert len(lines) == 1 and "client.nbdtest" in lines[0], lines
    assert "keyring" in lines[0], lines


def test_cephx_wrong_key(ceph_cephx, tmp_path):
    """Another user's keyring: refused by the cluster."""
    c = ceph_cephx
    wrong = tmp_path / "wrong.keyring"
    text = open(c.user_keyring).read().replace("client.nbdtest",
                                               "client.other")
    wrong.write_text(text)
    lines = start_fails(c, tmp_path, "id=other", "keyring=" + str(wrong),
                        "timeout=10")
    assert len(lines) == 1 and "client.other" in lines[0], lines
