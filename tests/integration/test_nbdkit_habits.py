"""Command lines nbdkit 1.32 accepts that nbdsrv used to refuse, and
the failures both share: each case runs under both servers with
--run 'nbdinfo --size "$uri"' and must end the same way.  Also the
oldstyle protocol (-o), which nbdsrv used to refuse.
(-D is in test_debug_flags.py, allocator= in test_allocators.py.)
"""
import json
import os
import re
import socket
import subprocess

import pytest

from conftest import BINARIES, server_env

RUN = 'nbdinfo --size "$uri"'
NO_IPC_LOCK = (["setpriv", "--bounding-set=-ipc_lock",
                "--inh-caps=-ipc_lock"] if os.getuid() == 0 else [])


def run(impl, *args, pre=(), preexec_fn=None):
    p = subprocess.run(list(pre) + [BINARIES[impl], "-U", "-"] + list(args)
                       + ["--run", RUN], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60,
                       preexec_fn=preexec_fn, env=server_env(impl))
    err = re.sub(r"(?m)^%s: (memory: )?" % impl, "PROG: ", p.stderr)
    return p.returncode, p.stdout, err


@pytest.mark.parametrize("args, size", [
    (["-t", "0", "memory", "1M"], 1048576),           # 0: the default
    (["--threads=0", "memory", "1M"], 1048576),
    (["memory", "size=1s"], 512),                     # 512-byte sectors
    (["memory", "3S"], 1536),
    (["memory", "size=0s"], 0),
    (["-u", "0", "-g", "0", "memory", "1M"], 1048576),  # numeric ids
    (["--swap", "memory", "1M"], 1048576),
])
def test_accepted_like_nbdkit(args, size):
    if "--swap" in args and os.getuid() != 0:
        # Unprivileged, mlockall depends on the limit: both the same.
        assert run("nbdsrv", *args)[0] == run("nbdkit", *args)[0]
        return
    assert run("nbdsrv", *args) == run("nbdkit", *args) == (
        0, "%d\n" % size, "")


def limit_memlock():
    import resource
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (65536, 65536))


@pytest.mark.unsanitized
def test_swap_beyond_the_memlock_limit_fails_like_nbdkit():
    out = {impl: run(impl, "--swap", "memory", "1M", pre=NO_IPC_LOCK,
                     preexec_fn=limit_memlock) for impl in BINARIES}
    assert out["nbdkit"] == (1, "", "PROG: --swap: mlockall: Cannot "
                             "allocate memory\n")
    assert out["nbdsrv"][:2] == (1, "")
    assert out["nbdsrv"][2].startswith(
        "PROG: error: --swap: mlockall: Cannot allocate memory: ")


@pytest.mark.parametrize("opt", ["-u", "-g"])
def test_unknown_user_or_group_says_so(opt):
    """nbdkit refuses too (and with --run hangs, a bug); nbdsrv once
    said 'cannot change user: Success'."""
    rc, out, err = run("nbdsrv", opt, "no-such-name-here", "memory", "1M")
    what = "user" if opt == "-u" else "group"
    assert (rc, out) == (1, "")
    assert err == ("PROG: error: %s no-such-name-here: no such %s: give a "
                   "%s name or number\n" % (opt, what, what))


def test_dump_config_offers_zstd_and_selinux_as_nbdkit():
    def keys(impl):
        out = subprocess.run([BINARIES[impl], "--dump-config"],
                             capture_output=True, text=True, timeout=60,
                             check=True).stdout
        return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)

    ours, theirs = keys("nbdsrv"), keys("nbdkit")
    for key in ("zstd", "selinux"):
        assert ours[key] == theirs[key] == "yes", key


@pytest.mark.parametrize("args, size", [
    (["--mask-handshake=65536", "memory", "1M"], 1048576),
    (["--mask-handshake=4294967295", "memory", "1M"], 1048576),
    (["partitioning", "/etc/hostname", "partition-type=MBR"], None),
    (["partitioning", "/etc/hostname", "partition-type=Gpt"], None),
])
def test_more_accepted_like_nbdkit(args, size):
    ours, theirs = run("nbdsrv", *args), run("nbdkit", *args)
    assert ours == theirs and ours[0] == 0 and ours[2] == "", (ours, theirs)
    if size is not None:
        assert ours[1] == "%d\n" % size


def test_empty_unix_socket_path_is_refused_like_nbdkit():
    p = {impl: subprocess.run([BINARIES[impl], "-U", "", "memory", "1M",
                               "--run", RUN], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
         for impl in BINARIES}
    assert p["nbdsrv"].returncode == p["nbdkit"].returncode == 1
    assert p["nbdsrv"].stdout == p["nbdkit"].stdout == ""
    assert p["nbdsrv"].stderr == ("nbdsrv: error: -U needs a socket path "
                                  "(or - for a private one)\n")


def test_missing_value_of_a_long_option_is_named():
    """nbdsrv said "option '-' needs a value" for a long option."""
    p = subprocess.run([BINARIES["nbdsrv"], "-U", "-", "memory", "1M",
                        "--run"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr == ("nbdsrv: error: option '--run' needs a value: see "
                        "'nbdsrv --help'\n")


# ------------------------------------------------------------ oldstyle

def greeting(srv, n=152):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(srv.sock)
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.parametrize("flags", [["-o"], ["--oldstyle"], ["-n", "-o"],
                                   ["-o", "-r"], ["-o", "--no-sr"]])
def test_oldstyle_greeting_is_nbdkits(server, flags):
    """-o: NBDMAGIC, the old version, size, flags, 124 zeroes; the same
    bytes as nbdkit's (protocol rules, section 1)."""
    ours, theirs = [greeting(server(*flags, "memory", "1M", impl=impl))
                    for impl in ("nbdsrv", "nbdkit")]
    assert ours == theirs
    assert len(ours) == 152
    assert ours[:16] == b"NBDMAGIC" + bytes.fromhex("0000420281861253")
    assert int.from_bytes(ours[16:24], "big") == 1048576
    assert ours[28:] == bytes(124)


def oldstyle_client(impl, ops):
    script = ('import nbd, sys; h = nbd.NBD(); h.connect_uri(sys.argv[1]); '
              + ops)
    p = subprocess.run([BINARIES[impl], "-U", "-", "-o", "memory", "1M",
                        "--run", '/usr/bin/python3 -c \'%s\' "$uri"'
                        % script], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def test_oldstyle_serves_clients_like_nbdkit():
    ops = ('h.pwrite(b"abc", 4096); '
           'print(h.get_protocol(), h.get_structured_replies_negotiated(),'
           ' h.pread(3, 4096), h.can_fua(), h.can_zero(), h.can_trim(), '
           'h.can_flush(), h.get_size())')
    ours = oldstyle_client("nbdsrv", ops)
    assert ours == oldstyle_client("nbdkit", ops)
    assert ours == (0, "oldstyle False bytearray(b'abc') True True True "
                    "True 1048576\n", "")


@pytest.mark.parametrize("op, zeroed", [
    ('h.zero(4096, 0)', True), ('h.trim(4096, 0)', True),
    ('h.flush()', False), ('h.pwrite(bytes(8), 0, nbd.CMD_FLAG_FUA)', False),
    ('h.cache(4096, 0)', False)])
def test_oldstyle_serves_what_it_advertises(op, zeroed):
    """Both servers advertise flush, FUA, trim, zero and cache in the
    oldstyle greeting, but nbdkit 1.32 then refuses each with EINVAL (a
    bug, in docs/nbdsrv.md); nbdsrv does what it advertised."""
    ops = ('h.pwrite(b"x" * 4096, 0); %s; '
           'print(h.pread(4096, 0).count(0))' % op)
    want = 4096 if zeroed else (8 if "FUA" in op else 0)
    assert oldstyle_client("nbdsrv", ops) == (0, "%d\n" % want, "")
    assert oldstyle_client("nbdkit", ops)[0] == 1


def test_last_of_n_and_o_wins():
    for flags, proto in ((["-o", "-n"], "newstyle-fixed"),
                         (["-n", "-o"], "oldstyle")):
        got = {}
        for impl in BINARIES:
            p = subprocess.run([BINARIES[impl], "-U", "-"] + flags +
                               ["memory", "1M", "--run",
                                'nbdinfo --json "$uri"'],
                               stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=60, check=True)
            got[impl] = json.loads(p.stdout)["protocol"]
        assert got["nbdsrv"] == got["nbdkit"] == proto, (flags, got)


def test_port_zero_is_one_port_for_every_address():
    """-p 0: the kernel picks a port, and the IPv4 and IPv6 sockets share
    it, so $uri (localhost, either family) reaches the server.  nbdkit
    1.32 puts port 0 itself in $uri, which reaches nothing (or whatever
    listens on 10809): nbdsrv differs on purpose (docs/nbdsrv.md)."""
    p = subprocess.run([BINARIES["nbdsrv"], "-p", "0", "memory", "1M",
                        "--run", 'echo "$port"; nbdinfo --size "$uri"; '
                        'nbdinfo --size "nbd://127.0.0.1:$port"; '
                        'nbdinfo --size "nbd://[::1]:$port"'],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    port, *sizes = p.stdout.split()
    assert int(port) > 0 and sizes == ["1048576"] * 3, p.stdout
