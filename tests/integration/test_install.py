"""`make install` and `make uninstall`, as a packager runs them.

The tree is configured for PREFIX=/usr and installed under a DESTDIR in
tmp, from its own build directory (so the build under test keeps its
prefix).  The installed tree must:

- put every file under a name with "nbdsrv" in its path, none of them a
  file of Debian's nbdkit packages (man pages included: nbdsrv(1),
  nbdsrv-NAME-plugin(1), nbdsrv-plugin(3); the systemd units);
- run: the installed binary finds the installed plugins, never the
  build tree's;
- build an out-of-tree plugin through the installed nbdsrv.pc, load it
  by name from the installed plugindir, and load the same .so in
  Debian's nbdkit, which must serve the same bytes;
- the same for a filter (by name from the installed filterdir), once
  include/nbdkit-filter.h exists and the server loads filters.

`make uninstall` with the same PREFIX and DESTDIR must leave no file.
"""
import os
import re
import subprocess

import nbd
import pytest

from conftest import BINARIES, ROOT, start_server

PREFIX = "/usr"
MULTIARCH = "x86_64-linux-gnu"
LIBDIR = os.path.join(PREFIX, "lib", MULTIARCH)
PLUGINDIR = os.path.join(LIBDIR, "nbdsrv", "plugins")
FILTERDIR = os.path.join(LIBDIR, "nbdsrv", "filters")
HEADER_DIR = os.path.join(PREFIX, "include", "nbdsrv")
DISK_SIZE = 1 << 20

# Bound on the build and install (the build alone takes about 15 s on
# two idle cores).
MAKE_TIMEOUT = 900

OOT_PLUGIN = r"""
/* An out-of-tree plugin, built only from the installed headers:
 * byte N of the disk is N modulo 251.
 */
#define NBDKIT_API_VERSION 2
#include <stdint.h>
#include <nbdkit-plugin.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static void *
oot_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
oot_get_size (void *handle)
{
  return %(size)d;
}

static int
oot_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  unsigned char *p = buf;

  for (uint32_t i = 0; i < count; i++)
    p[i] = (offset + i) %% 251;
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name = "oot",
  .open = oot_open,
  .get_size = oot_get_size,
  .pread = oot_pread,
};

NBDKIT_REGISTER_PLUGIN (plugin)
""" % {"size": DISK_SIZE}

OOT_FILTER = r"""
/* An out-of-tree filter, built only from the installed headers: reads
 * come back with every byte XORed with 0xa5.
 */
#include <stdint.h>
#include <nbdkit-filter.h>

static int
xor_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
           uint64_t offset, uint32_t flags, int *err)
{
  unsigned char *p = buf;

  if (next->pread (next, buf, count, offset, flags, err) == -1)
    return -1;
  for (uint32_t i = 0; i < count; i++)
    p[i] ^= 0xa5;
  return 0;
}

static struct nbdkit_filter filter = {
  .name = "ootxor",
  .pread = xor_pread,
};

NBDKIT_REGISTER_FILTER (filter)
"""


def expected_disk():
    return bytes(i % 251 for i in range(DISK_SIZE))


def make_env():
    """The environment for a nested make: without the outer make's
    variables (SANITIZE=1 must not reach the install build)."""
    env = dict(os.environ)
    for key in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "SANITIZE", "BUILD"):
        env.pop(key, None)
    return env


def run_make(target, build, destdir):
    r = subprocess.run(
        ["make", "-C", ROOT, target, "BUILD=%s" % build,
         "PREFIX=%s" % PREFIX, "LIBDIR=lib/%s" % MULTIARCH,
         "DESTDIR=%s" % destdir],
        env=make_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=MAKE_TIMEOUT)
    assert r.returncode == 0, "make %s failed:\n%s\n%s" % (
        target, r.stdout[-4000:], r.stderr[-4000:])
    return r


def files_under(top):
    """Every file and symlink under TOP, as absolute paths without TOP."""
    out = set()
    for d, _, names in os.walk(top):
        for n in names:
            out.add("/" + os.path.relpath(os.path.join(d, n), top))
    return out


def debian_nbdkit_files():
    """The files of every installed Debian package named nbdkit*."""
    pkgs = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Status}\n", "nbdkit*"],
        capture_output=True, text=True).stdout
    names = [line.split()[0] for line in pkgs.splitlines()
             if line.endswith("install ok installed")]
    assert "nbdkit" in names, "Debian's nbdkit is not installed"
    listing = subprocess.run(["dpkg", "-L"] + names, check=True,
                             capture_output=True, text=True).stdout
    return {p for p in listing.splitlines() if p.startswith("/")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(build directory, DESTDIR) of a `make install` with PREFIX=/usr."""
    top = tmp_path_factory.mktemp("install")
    build = str(top / "build")
    destdir = str(top / "root")
    run_make("install", build, destdir)
    return build, destdir


def pkg_config(destdir, *args):
    env = dict(os.environ,
               PKG_CONFIG_PATH=destdir + os.path.join(LIBDIR, "pkgconfig"),
               PKG_CONFIG_SYSROOT_DIR=destdir)
    r = subprocess.run(["pkg-config"] + list(args) + ["nbdsrv"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def pkg_variable(destdir, name):
    """A directory variable of the installed nbdsrv.pc, without DESTDIR
    (pkgconf adds the sysroot to variables too)."""
    value = pkg_config(destdir, "--variable=" + name)
    if value.startswith(destdir + "/"):
        value = value[len(destdir):]
    return value


def build_module(destdir, source, tmp_path, filename):
    """Compile SOURCE into FILENAME with the installed nbdsrv.pc."""
    src = tmp_path / (filename + ".c")
    src.write_text(source)
    out = str(tmp_path / filename)
    cflags = pkg_config(destdir, "--cflags").split()
    r = subprocess.run(["cc", "-std=gnu11", "-Wall", "-Werror", "-shared",
                        "-fPIC"] + cflags + ["-o", out, str(src)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def read_all(srv):
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    assert h.get_size() == DISK_SIZE
    data = bytes(h.pread(DISK_SIZE, 0))
    h.shutdown()
    return data


def serve_and_read(impl, args, sock, binary=None):
    srv = start_server(impl, args, sock, binary=binary)
    try:
        return read_all(srv)
    finally:
        srv.stop()


def test_install_names_do_not_clash_with_nbdkit(installed):
    _, destdir = installed
    files = files_under(destdir)
    assert "/usr/bin/nbdsrv" in files
    assert os.path.join(LIBDIR, "pkgconfig", "nbdsrv.pc") in files
    for h in os.listdir(os.path.join(ROOT, "include")):
        assert os.path.join(HEADER_DIR, h) in files
    for kind, target in (("plugin", PLUGINDIR), ("filter", FILTERDIR)):
        top = os.path.join(ROOT, kind + "s")
        for name in os.listdir(top) if os.path.isdir(top) else []:
            if os.path.isdir(os.path.join(top, name)):
                assert os.path.join(
                    target, "nbdkit-%s-%s.so" % (name, kind)) in files
    mandir = os.path.join(PREFIX, "share", "man")
    assert os.path.join(mandir, "man1", "nbdsrv.1") in files
    for page in ("nbdsrv-plugin.3", "nbdsrv-filter.3"):
        assert os.path.join(mandir, "man3", page) in files
    for f in files:
        m = re.fullmatch(re.escape(PLUGINDIR) + r"/nbdkit-(.*)-plugin\.so", f)
        if m:
            assert os.path.join(mandir, "man1",
                                "nbdsrv-%s-plugin.1" % m.group(1)) in files
    unitdir = os.path.join(PREFIX, "lib", "systemd", "system")
    for unit in ("nbdsrv.socket", "nbdsrv.service",
                 "nbdsrv-standalone.service"):
        assert os.path.join(unitdir, unit) in files
        text = open(destdir + os.path.join(unitdir, unit)).read()
        if unit.endswith(".service"):
            assert "ExecStart=/usr/bin/nbdsrv " in text
    assert [f for f in files if "nbdsrv" not in f] == []
    assert sorted(files & debian_nbdkit_files()) == []


def test_installed_binary_uses_installed_plugins(installed, tmp_path):
    _, destdir = installed
    binary = destdir + "/usr/bin/nbdsrv"
    config = subprocess.run([binary, "--dump-config"], check=True,
                            capture_output=True, text=True,
                            timeout=60).stdout.splitlines()
    assert "plugindir=%s%s" % (destdir, PLUGINDIR) in config
    assert "filterdir=%s%s" % (destdir, FILTERDIR) in config
    dump = subprocess.run([binary, "--dump-plugin", "memory"], check=True,
                          capture_output=True, text=True,
                          timeout=60).stdout.splitlines()
    assert "path=%s%s/nbdkit-memory-plugin.so" % (destdir, PLUGINDIR) \
        in dump
    data = serve_and_read("nbdsrv", ["pattern", "size=%d" % DISK_SIZE],
                          str(tmp_path / "sock"), binary=binary)
    assert data[8:16] == (8).to_bytes(8, "big")


def test_pkg_config_directories(installed):
    _, destdir = installed
    assert pkg_variable(destdir, "plugindir") == PLUGINDIR
    assert pkg_variable(destdir, "filterdir") == FILTERDIR
    assert pkg_config(destdir, "--cflags") == "-I%s%s" % (destdir,
                                                          HEADER_DIR)


def test_out_of_tree_plugin(installed, tmp_path):
    _, destdir = installed
    so = build_module(destdir, OOT_PLUGIN, tmp_path, "nbdkit-oot-plugin.so")
    target = destdir + pkg_variable(destdir, "plugindir")
    dest = os.path.join(target, "nbdkit-oot-plugin.so")
    subprocess.run(["install", "-m", "0755", so, dest], check=True)
    try:
        ours = serve_and_read("nbdsrv", ["oot"], str(tmp_path / "s1"),
                              binary=destdir + "/usr/bin/nbdsrv")
    finally:
        os.unlink(dest)
    theirs = serve_and_read("nbdkit", [so], str(tmp_path / "s2"))
    assert ours == expected_disk()
    assert theirs == expected_disk()


def build_filter(destdir, tmp_path):
    """The out-of-tree plugin and filter, both built from the installed
    headers; the filter only once include/nbdkit-filter.h exists."""
    if not os.path.exists(destdir + HEADER_DIR + "/nbdkit-filter.h"):
        pytest.skip("include/nbdkit-filter.h is not in the tree yet, so "
                    "no filter can be built against the installed headers")
    plugin = build_module(destdir, OOT_PLUGIN, tmp_path,
                          "nbdkit-oot-plugin.so")
    so = build_module(destdir, OOT_FILTER, tmp_path,
                      "nbdkit-ootxor-filter.so")
    return plugin, so


def test_out_of_tree_filter_in_nbdkit(installed, tmp_path):
    _, destdir = installed
    plugin, so = build_filter(destdir, tmp_path)
    data = serve_and_read("nbdkit", ["--filter=" + so, plugin],
                          str(tmp_path / "sock"))
    assert data == bytes(b ^ 0xa5 for b in expected_disk())


def test_out_of_tree_filter(installed, tmp_path):
    _, destdir = installed
    binary = destdir + "/usr/bin/nbdsrv"
    plugin, so = build_filter(destdir, tmp_path)
    probe = subprocess.run([binary, "--filter=nofilter", "null",
                            "--dump-plugin"], capture_output=True,
                           text=True, timeout=60)
    if "filters are not supported" in probe.stderr:
        pytest.skip("this nbdsrv cannot load filters yet: " +
                    probe.stderr.strip())
    target = destdir + pkg_variable(destdir, "filterdir")
    dest = os.path.join(target, "nbdkit-ootxor-filter.so")
    os.makedirs(target, exist_ok=True)
    subprocess.run(["install", "-m", "0755", so, dest], check=True)
    try:
        data = serve_and_read("nbdsrv", ["--filter=ootxor", plugin],
                              str(tmp_path / "sock"), binary=binary)
    finally:
        os.unlink(dest)
    assert data == bytes(b ^ 0xa5 for b in expected_disk())


def test_uninstall_removes_every_file(installed, tmp_path):
    build, _ = installed
    destdir = str(tmp_path / "root")
    run_make("install", build, destdir)
    assert "/usr/bin/nbdsrv" in files_under(destdir)
    run_make("uninstall", build, destdir)
    assert sorted(files_under(destdir)) == []
    # nbdsrv's own directories go too; shared ones such as bin/ stay.
    assert not os.path.exists(destdir + os.path.join(LIBDIR, "nbdsrv"))
    assert not os.path.exists(destdir + HEADER_DIR)
    assert os.path.isdir(destdir + "/usr/bin")
