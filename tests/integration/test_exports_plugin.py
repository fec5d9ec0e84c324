"""Several exports from one plugin: .list_exports, .default_export,
.export_description and nbdkit_export_name, as clients see them.

The plugin (tests/plugins/exports.c) lists alpha, beta and gamma with
"listed" descriptions, names beta the default, describes an open
export differently ("..., opened as 'NAME'"), makes export N N MiB long
and fills it with the name nbdkit_export_name returned in .open.
Everything is checked against nbdsrv and Debian's nbdkit, and the
nbdinfo output of the two is compared.
"""
import json
import os
import re
import subprocess

import nbd
import pytest

from conftest import BINARIES, BUILD

PLUGIN = os.path.join(BUILD, "tests", "plugins", "nbdkit-exports-plugin.so")
LISTED = {
    "alpha": "the first export",
    "beta": "the second export (default)",
    "gamma": "the third export",
}
SIZES = {"alpha": 1 << 20, "beta": 2 << 20, "gamma": 3 << 20}


def opened(name):
    return "%s, opened as '%s'" % (LISTED[name], name)


@pytest.fixture
def exports_server(server, impl):
    assert os.path.exists(PLUGIN), "test plugin not built: %s" % PLUGIN
    return server(PLUGIN, impl=impl)


def nbdinfo(*args):
    out = subprocess.run(["nbdinfo"] + list(args), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=60, check=True)
    return out.stdout.decode()


def without_socket(text):
    return re.sub(r"socket=[^\s\"]+", "socket=SOCK", text)


def test_list_exports(exports_server):
    info = json.loads(nbdinfo("--list", "--json", exports_server.uri))
    got = [(e["export-name"], e["description"], e["export-size"])
           for e in info["exports"]]
    assert got == [(n, LISTED[n], SIZES[n]) for n in ("alpha", "beta",
                                                     "gamma")]


@pytest.mark.nbdkit_plugin
def test_list_same_under_both_servers(server):
    outs = {}
    for impl in ("nbdsrv", "nbdkit"):
        s = server(PLUGIN, impl=impl)
        outs[impl] = (without_socket(nbdinfo("--list", s.uri)),
                      without_socket(nbdinfo("--list", "--json", s.uri)))
    assert outs["nbdsrv"] == outs["nbdkit"]


def test_opt_list(exports_server):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(exports_server.uri)
    seen = []
    try:
        n = h.opt_list(lambda name, desc: seen.append((name, desc)))
        assert n == 3
        assert seen == list(LISTED.items())
    finally:
        h.opt_abort()


@pytest.mark.parametrize("name", ["alpha", "beta", "gamma"])
def test_export_name_reaches_plugin(exports_server, name):
    h = nbd.NBD()
    h.connect_uri(exports_server.uri_for(name))
    try:
        assert h.get_size() == SIZES[name]
        assert h.pread(8, 0) == name.encode().ljust(8, b"\0")
    finally:
        h.shutdown()


def test_default_export(exports_server):
    """The empty name is the default export: .default_export's answer
    is what nbdkit_export_name returns in .open."""
    h = nbd.NBD()
    h.connect_uri(exports_server.uri)
    try:
        assert h.get_size() == SIZES["beta"]
        assert h.pread(8, 0) == b"beta".ljust(8, b"\0")
    finally:
        h.shutdown()


def test_unknown_export_is_refused(exports_server):
    h = nbd.NBD()
    with pytest.raises(nbd.Error, match="delta|No such file"):
        h.connect_uri(exports_server.uri_for("delta"))


@pytest.mark.parametrize("name,canonical",
                         [("alpha", "alpha"), ("gamma", "gamma"),
                          ("", "beta")])
def test_info_name_and_description(exports_server, name, canonical):
    """NBD_OPT_INFO with NBD_INFO_NAME and NBD_INFO_DESCRIPTION
    requested (libnbd's full info): the canonical name, and the
    description from .export_description of the opened export."""
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.set_full_info(True)
    h.connect_uri(exports_server.uri)
    try:
        h.set_export_name(name)
        h.opt_info()
        assert h.get_canonical_export_name() == canonical
        assert h.get_export_description() == opened(canonical)
        assert h.get_size() == SIZES[canonical]
        # Then go to the same export and read what .open saw.
        h.opt_go()
        assert h.pread(8, 0) == canonical.encode().ljust(8, b"\0")
        assert h.get_canonical_export_name() == canonical
    finally:
        h.shutdown()


def test_dash_e_names_the_run_export(tmp_path, impl):
    """-e sets the export name in $uri for --run, so the command
    reaches that export."""
    proc = subprocess.run(
        [BINARIES[impl], "-U", "-", "-e", "gamma", PLUGIN,
         "--run", 'nbdinfo --json "$uri"'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    info = json.loads(proc.stdout)
    e = info["exports"][0]
    assert e["export-name"] == "gamma"
    assert e["description"] == opened("gamma")
    assert e["export-size"] == SIZES["gamma"]


@pytest.mark.nbdkit_plugin
def test_info_same_under_both_servers(server):
    """nbdinfo of each export, and of the default one, is identical."""
    outs = {}
    for impl in ("nbdsrv", "nbdkit"):
        s = server(PLUGIN, impl=impl)
        outs[impl] = [without_socket(nbdinfo("--json", s.uri_for(n)))
                      for n in ("", "alpha", "beta", "gamma")]
    assert outs["nbdsrv"] == outs["nbdkit"]
