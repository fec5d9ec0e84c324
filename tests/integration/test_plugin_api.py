"""The connection-time plugin API (nbdkit_export_name, nbdkit_peer_*,
nbdkit_is_tls, nbdkit_printf_intern) and -D PLUGIN.FLAG=N, seen by a
test plugin under nbdsrv and under Debian's nbdkit.
"""
import os
import socket
import subprocess

import nbd
import pytest

from conftest import BUILD, NBDSRV

PROBE = os.path.join(BUILD, "tests", "plugins", "nbdkit-apiprobe-plugin.so")


def report(srv, export):
    h = nbd.NBD()
    h.connect_uri(srv.uri_for(export))
    text = h.pread(4096, 0).rstrip(b"\0").decode()
    h.shutdown()
    return dict(line.split("=", 1) for line in text.splitlines())


@pytest.mark.parametrize("readonly", [False, True])
def test_connection_api(server, impl, readonly):
    args = ["-D", "apiprobe.flag=7", PROBE] + (["-r"] if readonly else [])
    got = report(server(*args, impl=impl), "foo")
    assert got == {
        "export": "foo",
        "readonly": "1" if readonly else "0",
        "is_tls": "0",
        "peer_family": str(socket.AF_UNIX),
        "peer_pid": str(os.getpid()),
        "peer_uid": str(os.getuid()),
        "peer_gid": str(os.getgid()),
        "interned": "foo-42",
        "flag": "7",
    }


@pytest.mark.nbdkit_plugin
def test_same_as_nbdkit(server):
    ours = report(server(PROBE), "")
    theirs = report(server(PROBE, impl="nbdkit"), "")
    assert ours == theirs
    assert ours["export"] == "" and ours["flag"] == "0"


def test_unknown_debug_flag_beside_a_known_one(server):
    """A -D for a variable the plugin lacks only warns (as nbdkit,
    tests/integration/test_debug_flags.py): the server serves, and a
    good flag given with it is still set."""
    srv = server("-D", "apiprobe.nosuch=1", "-D", "apiprobe.flag=3", PROBE)
    assert report(srv, "")["flag"] == "3"
    assert ("nbdsrv: warning: -D apiprobe.nosuch: apiprobe does not contain "
            "a global variable called apiprobe_debug_nosuch"
            in srv.stderr_text())


@pytest.mark.parametrize("length", [63, 64, 1000])
def test_export_name_lengths(server, impl, length):
    """The plugin sees the client's name whole on either side of the
    length the export keeps inline (EXPORT_NAME_INLINE, backend.c)."""
    name = "n" * length
    got = report(server(PROBE, impl=impl), name)
    assert (got["export"], got["interned"]) == (name, name + "-42")


@pytest.mark.parametrize("length", [3, 1000])
def test_export_name_renamed_by_a_filter(server, impl, length):
    """With the exportname filter's default-export the plugin is opened
    under another name than the client's: nbdkit_export_name gives the
    plugin's, as in nbdkit."""
    name = "d" * length
    srv = server("--filter=exportname", PROBE, "default-export=" + name,
                 impl=impl)
    got = report(srv, "")
    assert (got["export"], got["interned"]) == (name, name + "-42")
