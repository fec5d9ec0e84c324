"""TLS (issue 9): X.509 and PSK with the clients people run (nbdinfo,
nbdcopy, nbdsh, libnbd's Python module, qemu-img, qemu-io), the STARTTLS
rules of protocol-rules.md §1.5 (H-10, H-11) on the raw wire through
Python's ssl module, every refusal with its one log line, and start-up
failures.  Certificates, the CRL and the PSK files are made at test time
with certtool and psktool; Debian's nbdkit runs with the same files
where the two should agree.
"""
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading

import pytest

import nbdraw
from conftest import BUILD, NBDSRV, NBDKIT
from test_idle_clients import THREADS_MAX, poll_until, threads
from util import nbd

PROBE = os.path.join(BUILD, "tests", "plugins", "nbdkit-apiprobe-plugin.so")
CERTTOOL = shutil.which("certtool")
PSKTOOL = shutil.which("psktool")

pytestmark = pytest.mark.skipif(
    CERTTOOL is None or PSKTOOL is None,
    reason="certtool/psktool missing: run 'scripts/install-deps.sh test'")

# Hang protection for a client process.
CLIENT_TIMEOUT = 60


def certtool(*args, template=None, out=None, cwd):
    cmd = [CERTTOOL] + list(args)
    if template is not None:
        tpath = os.path.join(cwd, "template.info")
        with open(tpath, "w") as f:
            f.write(template)
        cmd += ["--template", tpath]
    if out is not None:
        cmd += ["--outfile", out]
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True,
                   timeout=CLIENT_TIMEOUT)


def new_key(path, cwd):
    certtool("--generate-privkey", "--key-type=ecdsa", out=path, cwd=cwd)
    os.chmod(os.path.join(cwd, path), 0o600)


def new_ca(d, name):
    new_key(name + "-key.pem", d)
    certtool("--generate-self-signed", "--load-privkey", name + "-key.pem",
             template="cn = %s\nca\ncert_signing_key\ncrl_signing_key\n"
             "expiration_days = 30\n" % name,
             out=name + "-cert.pem", cwd=d)


def new_cert(d, ca, name, template):
    new_key(name + "-key.pem", d)
    certtool("--generate-certificate",
             "--load-ca-certificate", ca + "-cert.pem",
             "--load-ca-privkey", ca + "-key.pem",
             "--load-privkey", name + "-key.pem",
             template=template, out=name + "-cert.pem", cwd=d)


CLIENT_TEMPLATE = ("cn = %s\ntls_www_client\nencryption_key\n"
                   "signing_key\n%s")


class Pki:
    """Everything generated once for the module.  SERVER is the
    --tls-certificates directory (with a CRL); client directories are
    in libnbd's layout (ca-cert.pem, client-cert.pem, client-key.pem)."""

    def __init__(self, d):
        self.dir = d
        new_ca(d, "ca")
        new_ca(d, "otherca")
        new_cert(d, "ca", "server",
                 "cn = localhost\ndns_name = localhost\n"
                 "ip_address = 127.0.0.1\ntls_www_server\n"
                 "encryption_key\nsigning_key\nexpiration_days = 30\n")
        new_cert(d, "ca", "good",
                 CLIENT_TEMPLATE % ("good.example.com",
                                    "expiration_days = 30\n"))
        new_cert(d, "otherca", "wrongca",
                 CLIENT_TEMPLATE % ("wrongca.example.com",
                                    "expiration_days = 30\n"))
        new_cert(d, "ca", "revoked",
                 CLIENT_TEMPLATE % ("revoked.example.com",
                                    "expiration_days = 30\n"))
        new_cert(d, "ca", "expired",
                 CLIENT_TEMPLATE % (
                     "expired.example.com",
                     'activation_date = "2020-01-01 00:00:00"\n'
                     'expiration_date = "2020-02-01 00:00:00"\n'))
        self.server = os.path.join(d, "server")
        os.mkdir(self.server)
        certtool("--generate-crl", "--load-ca-privkey", "ca-key.pem",
                 "--load-ca-certificate", "ca-cert.pem",
                 "--load-certificate", "revoked-cert.pem",
                 template="crl_next_update = 30\ncrl_number = 1\n",
                 out=os.path.join(self.server, "ca-crl.pem"), cwd=d)
        for src, dst in [("ca-cert.pem", "ca-cert.pem"),
                         ("server-cert.pem", "server-cert.pem"),
                         ("server-key.pem", "server-key.pem")]:
            shutil.copy(os.path.join(d, src), os.path.join(self.server, dst))
        self.clients = {}
        for name in ["good", "wrongca", "revoked", "expired", None]:
            cd = os.path.join(d, "client-%s" % name)
            os.mkdir(cd)
            shutil.copy(os.path.join(d, "ca-cert.pem"), cd)
            if name:
                shutil.copy(os.path.join(d, name + "-cert.pem"),
                            os.path.join(cd, "client-cert.pem"))
                shutil.copy(os.path.join(d, name + "-key.pem"),
                            os.path.join(cd, "client-key.pem"))
            self.clients[name] = cd
        self.ca = os.path.join(d, "ca-cert.pem")
        # The server's PSK file (alice), a client file with a wrong key
        # for alice, and one for a user the server does not know.
        self.psk = self.psk_file("keys.psk", "alice")
        self.psk_wrong = self.psk_file("wrong.psk", "alice")
        self.psk_unknown = self.psk_file("unknown.psk", "mallory")
        # psktool also writes the directory layout QEMU wants.
        self.qemu_psk = os.path.join(d, "qemu-psk")
        os.mkdir(self.qemu_psk)
        shutil.copy(self.psk, os.path.join(self.qemu_psk, "keys.psk"))

    def psk_file(self, name, user):
        path = os.path.join(self.dir, name)
        subprocess.run([PSKTOOL, "-u", user, "-p", path], check=True,
                       capture_output=True, timeout=CLIENT_TIMEOUT)
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(str(tmp_path_factory.mktemp("pki")))


def x509_args(pki, mode="require", verify=False):
    return (["--tls=%s" % mode, "--tls-certificates=%s" % pki.server]
            + (["--tls-verify-peer"] if verify else []))


def psk_args(pki, mode="require"):
    return ["--tls=%s" % mode, "--tls-psk=%s" % pki.psk]


def tls_uri(srv, client_dir=None, psk=None, user="alice", export=""):
    if psk:
        return "nbds+unix://%s@/%s?socket=%s&tls-psk-file=%s" % (
            user, export, srv.sock, psk)
    return "nbds+unix:///%s?socket=%s&tls-certificates=%s" % (
        export, srv.sock, client_dir)


def run(cmd, ok=True):
    p = subprocess.run(cmd, capture_output=True, text=True,
                       timeout=CLIENT_TIMEOUT)
    if ok:
        assert p.returncode == 0, "%s: %s%s" % (cmd, p.stdout, p.stderr)
    return p


def connect(srv, pki, client="good", psk=None, user="alice"):
    """A libnbd handle connected with set_tls(TLS_REQUIRE)."""
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    if psk:
        h.set_tls_psk_file(psk)
        h.set_tls_username(user)
    else:
        h.set_tls_certificates(pki.clients[client])
    h.connect_unix(srv.sock)
    return h


def log_lines(srv, needle):
    return [line for line in srv.stderr_text().splitlines()
            if needle in line]


# --- real clients --------------------------------------------------------

@pytest.mark.parametrize("auth", ["x509", "psk"])
def test_nbdinfo(server, impl, pki, auth):
    """nbdinfo with an nbds+unix URI: both servers say TLS is on."""
    if auth == "x509":
        srv = server(*x509_args(pki), "memory", "size=1M", impl=impl)
        uri = tls_uri(srv, pki.clients["good"])
    else:
        srv = server(*psk_args(pki), "memory", "size=1M", impl=impl)
        uri = tls_uri(srv, psk=pki.psk)
    out = run(["nbdinfo", uri]).stdout
    assert "with TLS" in out
    assert "export-size: 1048576" in out


@pytest.mark.parametrize("auth", ["x509", "psk"])
def test_libnbd_read_write(server, pki, auth):
    """libnbd's Python module, set_tls(TLS_REQUIRE): write a pattern,
    read it back, with parallel requests in flight on one TLS
    connection."""
    args = x509_args(pki) if auth == "x509" else psk_args(pki)
    srv = server(*args, "memory", "size=64M")
    h = connect(srv, pki, psk=pki.psk if auth == "psk" else None)
    assert h.get_tls_negotiated()
    blocks = [bytes([i % 251]) * 65536 for i in range(64)]
    for i, b in enumerate(blocks):
        h.aio_pwrite(b, i * 65536)
    assert h.aio_in_flight() > 0
    for _ in range(100000):
        if h.aio_in_flight() == 0:
            break
        h.poll(-1)
    assert h.aio_in_flight() == 0
    for i, b in enumerate(blocks):
        assert h.pread(65536, i * 65536) == b
    # One 32 MiB write and read: many records each way.
    big = os.urandom(1 << 20) * 32
    h.pwrite(big, 16 << 20)
    assert h.pread(len(big), 16 << 20) == big
    h.shutdown()


def test_idle_tls_clients_park(server, pki):
    """TLS connections that go quiet give their threads back (parking,
    issue 11) and are served again when they ask, with nothing lost from
    the TLS stream."""
    srv = server(*psk_args(pki), "memory", "size=1M")
    hs = [connect(srv, pki, psk=pki.psk) for _ in range(20)]
    try:
        for i, h in enumerate(hs):
            h.pwrite(bytes([i + 1]) * 4096, i * 4096)
        poll_until(lambda: threads(srv.pid) <= THREADS_MAX,
                   "at most %d threads with 20 idle TLS clients"
                   % THREADS_MAX)
        for i, h in enumerate(hs):
            assert h.pread(4096, i * 4096) == bytes([i + 1]) * 4096
    finally:
        for h in hs:
            h.shutdown()


@pytest.fixture
def tcp_server(pki):
    """nbdsrv on 127.0.0.1 with a port the kernel picks (read back from
    --print-uri), --tls=require and --tls-verify-peer; stopped by PID."""
    proc = subprocess.Popen(
        [NBDSRV, "-f", "-i", "127.0.0.1", "-p", "0", "--print-uri",
         *x509_args(pki, verify=True), "memory", "size=4M"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        uri = proc.stdout.readline().strip()
        assert uri.startswith("nbds://127.0.0.1:"), uri
        yield uri.split(":")[2].split("/")[0]
    finally:
        proc.terminate()
        proc.wait(CLIENT_TIMEOUT)


def test_tcp_nbds_uri_and_qemu(tcp_server, pki):
    """Over TCP: an nbds:// URI (the server's certificate is checked
    against 127.0.0.1), and qemu-io with a client certificate."""
    port = tcp_server
    out = run(["nbdinfo", "nbds://127.0.0.1:%s/?tls-certificates=%s"
               % (port, pki.clients["good"])]).stdout
    assert "with TLS" in out
    out = run(["qemu-io", "--object", qemu_object(pki, "x509"),
               "--image-opts",
               "driver=nbd,host=127.0.0.1,port=%s,tls-creds=tls0" % port,
               "-c", "write -P 0x33 0 1M", "-c", "read -P 0x33 0 1M"]).stdout
    assert "Pattern verification failed" not in out
    assert "read 1048576/1048576" in out
    p = run(["nbdinfo", "nbds://127.0.0.1:%s/?tls-certificates=%s"
             % (port, pki.clients["revoked"])], ok=False)
    assert p.returncode != 0


def test_nbdcopy_round_trip(server, pki, tmp_path):
    """nbdcopy in and out through PSK TLS gives back the same bytes."""
    src = tmp_path / "src"
    dst = tmp_path / "dst"
    src.write_bytes(os.urandom(8 << 20))
    srv = server(*psk_args(pki), "memory", "size=8M")
    uri = tls_uri(srv, psk=pki.psk)
    run(["nbdcopy", str(src), uri])
    run(["nbdcopy", uri, str(dst)])
    assert src.read_bytes() == dst.read_bytes()


def test_nbdsh(server, pki):
    srv = server(*x509_args(pki, verify=True), "memory", "size=1M")
    out = run(["env", "PATH=/usr/bin:" + os.environ["PATH"], "nbdsh",
               "-c", "h.set_uri_allow_local_file(True)",
               "-c", "h.connect_uri(%r)" % tls_uri(srv, pki.clients["good"]),
               "-c",
               "h.pwrite(b'tls!' * 128, 4096)\n"
               "print(h.get_tls_negotiated(), bytes(h.pread(4, 4096)))"]).stdout
    assert out.strip() == "True b'tls!'"


def qemu_object(pki, auth):
    if auth == "x509":
        return "tls-creds-x509,id=tls0,endpoint=client,dir=%s" % \
            pki.clients["good"]
    return "tls-creds-psk,id=tls0,endpoint=client,dir=%s,username=alice" \
        % pki.qemu_psk


@pytest.mark.parametrize("auth", ["x509", "psk"])
def test_qemu(server, pki, auth):
    """qemu-io writes and reads back a pattern, qemu-img reads the size,
    both through --object tls-creds-*."""
    args = (x509_args(pki, verify=True) if auth == "x509"
            else psk_args(pki))
    srv = server(*args, "memory", "size=4M")
    opts = ("driver=nbd,server.type=unix,server.path=%s,tls-creds=tls0,"
            "tls-hostname=localhost" % srv.sock)
    obj = qemu_object(pki, auth)
    out = run(["qemu-io", "--object", obj, "--image-opts", opts,
               "-c", "write -P 0x5a 1M 1M", "-c", "read -P 0x5a 1M 1M",
               "-c", "read -P 0 0 1M"]).stdout
    assert "Pattern verification failed" not in out
    assert out.count("read 1048576/1048576") == 2
    out = run(["qemu-img", "info", "--output=json", "--object", obj,
               "--image-opts", opts]).stdout
    assert '"virtual-size": 4194304' in out


def test_sixteen_clients(server, pki):
    """16 TLS clients at once, each writing and verifying its own 1 MiB
    region in 64 KiB pieces; nothing leaks between them."""
    srv = server(*x509_args(pki), "memory", "size=16M")
    errors = []
    start = threading.Barrier(16, timeout=CLIENT_TIMEOUT)

    def client(i):
        try:
            h = connect(srv, pki)
            start.wait()
            data = bytes([i + 1]) * 65536
            for k in range(16):
                h.pwrite(data, i * (1 << 20) + k * 65536)
            got = h.pread(1 << 20, i * (1 << 20))
            if got != data * 16:
                errors.append("client %d read back other data" % i)
            h.shutdown()
        except Exception as e:             # reported below, not lost
            errors.append("client %d: %r" % (i, e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CLIENT_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert errors == []


def test_tls_on_serves_plain_and_tls(server, impl, pki):
    """--tls=on: plain and TLS clients both work, and nbdkit_is_tls()
    tells the plugin which one it is serving."""
    srv = server(*x509_args(pki, mode="on"), PROBE, impl=impl)

    def is_tls(h):
        text = h.pread(4096, 0).rstrip(b"\0").decode()
        return dict(l.split("=", 1) for l in text.splitlines())["is_tls"]

    plain = nbd.NBD()
    plain.connect_unix(srv.sock)
    assert not plain.get_tls_negotiated()
    assert is_tls(plain) == "0"
    plain.shutdown()
    h = connect(srv, pki)
    assert is_tls(h) == "1"
    h.shutdown()


def test_default_export_is_tls(server, pki, tmp_path):
    """The is_tls argument of .default_export (through the sh plugin):
    the name the plugin picks differs with and without TLS."""
    script = tmp_path / "plugin.sh"
    script.write_text(
        "#!/bin/sh\n"
        "case \"$1\" in\n"
        "  get_size) echo 1M ;;\n"
        "  default_export) if [ \"$3\" = true ]; then echo secure;\n"
        "                  else echo public; fi ;;\n"
        "  open) echo handle ;;\n"
        "  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;\n"
        "  *) exit 2 ;;\n"
        "esac\n")
    script.chmod(0o755)
    from util import SH_PLUGIN
    srv = server(*x509_args(pki, mode="on"), SH_PLUGIN, str(script))
    plain = nbd.NBD()
    plain.set_full_info(True)
    plain.connect_unix(srv.sock)
    assert plain.get_canonical_export_name() == "public"
    plain.shutdown()
    h = nbd.NBD()
    h.set_full_info(True)
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_certificates(pki.clients["good"])
    h.connect_unix(srv.sock)
    assert h.get_canonical_export_name() == "secure"
    h.shutdown()


# --- refusals: one log line each, other clients unaffected ---------------

def refused(fn):
    with pytest.raises(nbd.Error):
        fn()


def test_certificate_refusals(server, pki):
    """--tls-verify-peer: a certificate from another CA, an expired one,
    a revoked one (ca-crl.pem) and none at all are refused, each with its
    own line; a good client still gets in after each.  libnbd (GnuTLS)
    sends no certificate our CA did not issue, so another CA's is also
    presented through Python's ssl, which sends it anyway."""
    srv = server(*x509_args(pki, verify=True), "memory", "size=1M")
    for bad in ["wrongca", "expired", "revoked", None]:
        refused(lambda: connect(srv, pki, client=bad))
        h = connect(srv, pki)
        assert h.get_size() == 1 << 20
        h.shutdown()
    with nbdraw.Client(srv.sock) as c:
        c.start()
        assert c.option(nbdraw.OPT_STARTTLS)[-1].type == nbdraw.REP_ACK
        ctx = tls_context(pki)
        ctx.load_cert_chain(os.path.join(pki.dir, "wrongca-cert.pem"),
                            os.path.join(pki.dir, "wrongca-key.pem"))
        with pytest.raises(OSError):
            s = ctx.wrap_socket(c.sock, server_hostname="localhost")
            s.recv(1)
    connect(srv, pki).shutdown()
    refusals = log_lines(srv, "TLS: refusing")
    assert len(refusals) == 5, refusals
    assert len([r for r in refusals if "no certificate issued by our CA"
                in r]) == 2
    assert len([r for r in refusals if "issuer is unknown" in r]) == 1
    assert len([r for r in refusals if "expired" in r]) == 1
    assert len([r for r in refusals if "revoked" in r]) == 1


def test_psk_refusals(server, pki):
    srv = server(*psk_args(pki), "memory", "size=1M")
    refused(lambda: connect(srv, pki, psk=pki.psk_wrong))
    refused(lambda: connect(srv, pki, psk=pki.psk_unknown, user="mallory"))
    h = connect(srv, pki, psk=pki.psk)
    assert h.get_size() == 1 << 20
    h.shutdown()
    assert len(log_lines(srv, "refusing PSK user 'alice': wrong key")) == 1
    assert len(log_lines(srv, "TLS: ")) == 2
    assert len(log_lines(srv, "refusing PSK user 'mallory': not in")) == 1


def test_plain_client_against_require(server, impl, pki):
    """H-11 through libnbd: a plain client is refused (TLS_REQD); on
    nbdsrv with one log line for the connection."""
    srv = server(*x509_args(pki), "memory", "size=1M", impl=impl)
    h = nbd.NBD()
    with pytest.raises(nbd.Error) as e:
        h.connect_unix(srv.sock)
    assert "TLS" in str(e.value)
    h = connect(srv, pki)
    h.shutdown()
    if impl == "nbdsrv":
        assert len(log_lines(srv, "without TLS, which --tls=require")) == 1


# --- the raw wire: §1.5 with Python's ssl module -------------------------

def tls_context(pki, **kw):
    ctx = ssl.create_default_context(cafile=pki.ca)
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def starttls(c, pki, **kw):
    """STARTTLS on raw client C, then wrap its socket; returns the
    option reply."""
    r = c.option(nbdraw.OPT_STARTTLS)
    assert r[-1].type == nbdraw.REP_ACK, r
    c.sock = tls_context(pki, **kw).wrap_socket(c.sock,
                                                server_hostname="localhost")
    return r


@pytest.fixture
def require_pair(server, pki):
    """nbdsrv and nbdkit with --tls=require on the same certificates."""
    return {impl: server(*x509_args(pki), "memory", "size=1M", impl=impl)
            for impl in ("nbdsrv", "nbdkit")}


@pytest.mark.parametrize("option", [nbdraw.OPT_GO, nbdraw.OPT_INFO,
                                    nbdraw.OPT_LIST,
                                    nbdraw.OPT_STRUCTURED_REPLY,
                                    nbdraw.OPT_LIST_META_CONTEXT, 99])
def test_h11_options_before_starttls(server, impl, pki, option):
    """H-11: under require every option but STARTTLS and ABORT gets
    TLS_REQD with its payload consumed, and the connection goes on."""
    srv = server(*x509_args(pki), "memory", "size=1M", impl=impl)
    payload = {nbdraw.OPT_GO: nbdraw.info_payload(),
               nbdraw.OPT_INFO: nbdraw.info_payload(),
               nbdraw.OPT_LIST_META_CONTEXT:
               nbdraw.meta_payload(b"", [b"base:"]),
               99: b"junk"}.get(option, b"")
    with nbdraw.Client(srv.sock) as c:
        c.start()
        r = c.option(option, payload)
        assert [x.type for x in r] == [nbdraw.REP_ERR_TLS_REQD]
        starttls(c, pki)
        r = c.go()
        assert r[-1].type == nbdraw.REP_ACK
        assert c.request(nbdraw.CMD_READ, length=512).error == 0


def test_h11_export_name_disconnects(server, impl, pki):
    srv = server(*x509_args(pki), "memory", "size=1M", impl=impl)
    with nbdraw.Client(srv.sock) as c:
        c.start()
        c.send_option(nbdraw.OPT_EXPORT_NAME, b"")
        assert c.wait_closed()
    if impl == "nbdsrv":
        assert log_lines(srv, "NBD_OPT_EXPORT_NAME without TLS")


def test_h11_abort_allowed(server, pki):
    srv = server(*x509_args(pki), "memory", "size=1M")
    with nbdraw.Client(srv.sock) as c:
        c.start()
        assert c.option(nbdraw.OPT_ABORT)[-1].type == nbdraw.REP_ACK


def test_starttls_rules(server, impl, pki):
    """§1.3 STARTTLS: a payload is INVALID; a second STARTTLS under TLS
    is INVALID; both leave the connection usable.  The same on both
    servers."""
    srv = server(*x509_args(pki, mode="on"), "memory", "size=1M", impl=impl)
    with nbdraw.Client(srv.sock) as c:
        c.start()
        r = c.option(nbdraw.OPT_STARTTLS, b"x")
        assert [x.type for x in r] == [nbdraw.REP_ERR_INVALID]
        starttls(c, pki)
        r = c.option(nbdraw.OPT_STARTTLS)
        assert [x.type for x in r] == [nbdraw.REP_ERR_INVALID]
        assert c.go()[-1].type == nbdraw.REP_ACK
        assert c.request(nbdraw.CMD_READ, length=4096).error == 0
        c.disconnect()


def test_starttls_off_is_policy(server, impl):
    srv = server("--tls=off", "memory", "size=1M", impl=impl)
    with nbdraw.Client(srv.sock) as c:
        c.start()
        r = c.option(nbdraw.OPT_STARTTLS)
        assert [x.type for x in r] == [nbdraw.REP_ERR_POLICY]
        assert c.go()[-1].type == nbdraw.REP_ACK


def test_h10_starttls_forgets_negotiation(server, pki):
    """H-10: structured replies negotiated in plain text are forgotten
    once TLS starts, so SET_META_CONTEXT needs them again."""
    srv = server(*x509_args(pki, mode="on"), "memory", "size=1M")
    with nbdraw.Client(srv.sock) as c:
        c.start()
        assert c.structured_reply()[-1].type == nbdraw.REP_ACK
        starttls(c, pki)
        meta = nbdraw.meta_payload(b"", [b"base:allocation"])
        r = c.option(nbdraw.OPT_SET_META_CONTEXT, meta)
        assert r[-1].type == nbdraw.REP_ERR_INVALID
        assert c.structured_reply()[-1].type == nbdraw.REP_ACK
        r = c.option(nbdraw.OPT_SET_META_CONTEXT, meta)
        assert r[-1].type == nbdraw.REP_ACK


def test_garbage_after_starttls(server, pki):
    """Bytes that are not TLS after the ACK are a handshake failure with
    a log line; bytes sent before the ACK are refused before any TLS;
    a client that stops mid-handshake is cut at --timeout.  The server
    serves a good client afterwards."""
    srv = server(*x509_args(pki), "--timeout=2", "memory", "size=1M")
    with nbdraw.Client(srv.sock) as c:
        c.start()
        assert c.option(nbdraw.OPT_STARTTLS)[-1].type == nbdraw.REP_ACK
        c.send(b"GET / HTTP/1.0\r\n\r\n" * 20)
        assert c.wait_closed()
    with nbdraw.Client(srv.sock) as c:
        c.start()
        # One send, so the early bytes arrive with the option.
        c.send(struct.pack(">QII", nbdraw.IHAVEOPT, nbdraw.OPT_STARTTLS, 0)
               + b"\x16\x03\x01early")
        assert c.wait_closed()
    with nbdraw.Client(srv.sock) as c:
        c.start()
        assert c.option(nbdraw.OPT_STARTTLS)[-1].type == nbdraw.REP_ACK
        c.send(b"\x16\x03\x01\x02\x00\x01")     # a ClientHello's start
        assert c.wait_closed()
    h = connect(srv, pki)
    h.shutdown()
    assert len(log_lines(srv, "other than a TLS handshake")) == 1
    assert len(log_lines(srv, "after NBD_OPT_STARTTLS without waiting")) == 1
    assert len(log_lines(srv, "did not finish the handshake within 2")) == 1


def test_close_notify_on_disconnect(server, pki):
    """gnutls_bye: after NBD_CMD_DISC the server closes TLS cleanly, so
    the client reads end-of-stream, not a truncation error."""
    srv = server(*x509_args(pki), "memory", "size=1M")
    with nbdraw.Client(srv.sock) as c:
        c.start()
        starttls(c, pki)
        assert c.go()[-1].type == nbdraw.REP_ACK
        c.disconnect()
        assert c.sock.recv(1) == b""


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_priority_default_is_tls12_and_13(server, pki):
    """The default priority refuses TLS 1.1 and accepts 1.2 and 1.3;
    --tls-priority can narrow it."""
    srv = server(*x509_args(pki), "memory", "size=1M")
    for version, ok in [(ssl.TLSVersion.TLSv1_2, True),
                        (ssl.TLSVersion.TLSv1_3, True)]:
        with nbdraw.Client(srv.sock) as c:
            c.start()
            starttls(c, pki, minimum_version=version,
                     maximum_version=version)
            assert c.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                        ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[
                                            version]
    with nbdraw.Client(srv.sock) as c:
        c.start()
        ctx = tls_context(pki)
        # OpenSSL's own floor is TLS 1.2 at its default security level.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        assert c.option(nbdraw.OPT_STARTTLS)[-1].type == nbdraw.REP_ACK
        with pytest.raises(OSError):
            ctx.wrap_socket(c.sock, server_hostname="localhost")
    assert len(log_lines(srv, "no TLS version that --tls-priority")) == 1
    srv2 = server(*x509_args(pki),
                  "--tls-priority=NORMAL:-VERS-ALL:+VERS-TLS1.2",
                  "memory", "size=1M")
    with nbdraw.Client(srv2.sock) as c:
        c.start()
        starttls(c, pki)
        assert c.sock.version() == "TLSv1.2"


def test_session_debug(server, pki):
    srv = server(*x509_args(pki, verify=True), "-v",
                 "-D", "nbdkit.tls.session=1", "memory", "size=1M")
    connect(srv, pki).shutdown()
    text = srv.stderr_text()
    assert "TLS session: (TLS1.3)" in text
    assert "CN=good.example.com" in text


# --- start-up ------------------------------------------------------------

def start_fails(*args):
    p = subprocess.run([NBDSRV, "-f", "-U", "/nonexistent/never"]
                       + list(args) + ["memory", "size=1M"],
                       capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 1, p
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


def test_startup_failures(pki, tmp_path):
    missing = str(tmp_path / "nodir")
    line = start_fails("--tls=on", "--tls-certificates=" + missing)
    assert line.endswith("--tls-certificates %s: No such file or directory"
                         % missing)
    line = start_fails("--tls=on", "--tls-certificates=" + pki.ca)
    assert line.endswith("%s: not a directory" % pki.ca)
    nokey = tmp_path / "nokey"
    nokey.mkdir()
    shutil.copy(os.path.join(pki.server, "server-cert.pem"), nokey)
    assert "server-key.pem" in start_fails("--tls=require",
                                           "--tls-certificates=%s" % nokey)
    shutil.copy(os.path.join(pki.server, "server-key.pem"), nokey)
    assert "ca-cert.pem" in start_fails("--tls=require", "--tls-verify-peer",
                                        "--tls-certificates=%s" % nokey)
    nopsk = str(tmp_path / "nopsk")
    assert nopsk in start_fails("--tls=require", "--tls-psk=" + nopsk)
    bad = tmp_path / "bad.psk"
    bad.write_text("alice:not-hex\n")
    assert str(bad) in start_fails("--tls=require", "--tls-psk=%s" % bad)
    assert "--tls-priority" in start_fails(
        "--tls=on", "--tls-certificates=" + pki.server,
        "--tls-priority=NOT-A-PRIORITY")
    line = start_fails("--tls=sideways")
    assert "expected off, on or require" in line


def test_default_certificate_directories(server, tmp_path):
    """Like nbdkit: with no --tls-certificates/--tls-psk the default
    directories are searched; finding nothing, --tls=require fails at
    start-up and --tls=on warns and serves plain text."""
    if os.path.exists("/etc/pki/nbdkit") or \
            os.path.exists(os.path.expanduser("~/.pki/nbdkit")):
        pytest.skip("this host has default nbdkit certificates")
    where = "/etc/pki/nbdkit" if os.geteuid() == 0 else ".pki/nbdkit"
    assert where in start_fails("--tls=require")
    srv = server("--tls=on", "memory", "size=1M")
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    assert not h.get_tls_negotiated()
    h.shutdown()
    assert log_lines(srv, "nbdsrv: warning: --tls=on but no certificates")


@pytest.mark.parametrize("mode,scheme", [("require", "nbds+unix://"),
                                         ("on", "nbd+unix://")])
def test_run_uri_scheme(impl, pki, mode, scheme):
    """$uri says nbds when a plain client would be refused, as nbdkit."""
    p = run([{"nbdsrv": NBDSRV, "nbdkit": NBDKIT}[impl], "-U", "-",
             *x509_args(pki, mode=mode), "memory", "1M",
             "--run", "echo \"$uri\""])
    assert p.stdout.startswith(scheme), p.stdout


def test_dump_config():
    out = run([NBDSRV, "--dump-config"]).stdout
    assert "tls=yes" in out.splitlines()
    assert "root_tls_certificates_dir=/etc/pki/nbdkit" in out.splitlines()


# --- privileges and the Unix socket --------------------------------------

def test_unix_socket_mode(server):
    srv = server("memory", "size=1M")
    assert os.stat(srv.sock).st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to drop to nobody")
def test_drop_privileges_after_loading_keys(server, pki):
    """-u/-g: the key (0600, root's) is loaded before the drop; the
    server then runs as nobody:nogroup, owns its socket, and serves."""
    srv = server(*x509_args(pki), "-u", "nobody", "-g", "nogroup",
                 "memory", "size=1M")
    with open("/proc/%d/status" % srv.pid) as f:
        status = dict(l.split(":", 1) for l in f if ":" in l)
    assert status["Uid"].split()[:2] == ["65534", "65534"]
    assert status["Gid"].split()[:2] == ["65534", "65534"]
    assert status["Groups"].split() == ["65534"]
    st = os.stat(srv.sock)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534,
                                                          0o660)
    h = connect(srv, pki)
    h.pwrite(b"x" * 512, 0)
    h.shutdown()


def test_selinux_label_warns_without_selinux(server):
    if os.path.exists("/sys/fs/selinux/enforce"):
        pytest.skip("SELinux is enabled here: the label is applied")
    srv = server("--selinux-label=system_u:object_r:svirt_socket_t:s0",
                 "memory", "size=1M")
    h = nbd.NBD()
    h.connect_unix(srv.sock)
    h.shutdown()
    assert log_lines(srv, "--selinux-label=system_u") == [
        "nbdsrv: warning: --selinux-label=system_u:object_r:svirt_socket_t"
        ":s0 ignored: SELinux is not enabled on this host"]


def test_single_on_pipes(pki):
    """-s served on pipes (as from inetd with a pipe pair), TLS through
    them: GnuTLS's own transport uses socket calls, which pipes refuse,
    so nbdsrv reads and writes itself.  nbdkit 1.32 fails here."""
    p = subprocess.Popen([NBDSRV, "-s", *x509_args(pki), "memory",
                          "size=1M"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ours, theirs = socket.socketpair()

    def to_server():
        """Client to server; ends at either side's close."""
        try:
            for _ in range(1 << 20):
                data = ours.recv(65536)
                if not data:
                    break
                # Unbuffered: a write the server never reads (it may
                # exit before the client's close_notify) is not left
                # behind for close() to fail on.
                os.write(p.stdin.fileno(), data)
            p.stdin.close()
        except (OSError, ValueError):
            pass

    def from_server():
        try:
            for _ in range(1 << 20):
                data = os.read(p.stdout.fileno(), 65536)
                if not data:
                    break
                ours.sendall(data)
            ours.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            pass

    relays = [threading.Thread(target=f, daemon=True)
              for f in (to_server, from_server)]
    for t in relays:
        t.start()
    try:
        h = nbd.NBD()
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_certificates(pki.clients["good"])
        h.connect_socket(theirs.detach())       # libnbd owns it now
        h.pwrite(b"pipe" * 1024, 8192)
        assert h.pread(4096, 8192) == b"pipe" * 1024
        assert h.get_tls_negotiated()
        h.shutdown()
        del h                                   # closes the socket
        assert p.wait(CLIENT_TIMEOUT) == 0
        for t in relays:
            t.join(CLIENT_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        ours.close()
        for f in (p.stdin, p.stdout, p.stderr):
            f.close()
