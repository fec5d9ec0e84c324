"""Probing the server as nbdkit-probing(1) describes: --version with and
without a plugin, --dump-config, the option lists, script plugins found
by name, and the bash completion script.  Compared with Debian's nbdkit
where both can answer.
"""
import os
import re
import subprocess

import pytest

from conftest import BINARIES, BUILD, NBDKIT, NBDSRV, PLUGINDIR

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COMPLETION = os.path.join(ROOT, "bash", "nbdsrv")
ENV = dict(os.environ, PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))
TIMEOUT = 120


def run(*cmd, **kw):
    p = subprocess.run(list(cmd), capture_output=True, env=ENV,
                       timeout=TIMEOUT, stdin=subprocess.DEVNULL, **kw)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def config_of(binary):
    rc, out, _ = run(binary, "--dump-config")
    assert rc == 0
    return dict(line.split("=", 1) for line in out.splitlines())


# ------------------------------------------------------------ --version

@pytest.mark.parametrize("args,status", [
    ([], 0),
    (["null"], 0),
    (["null", "unused=parameter"], 0),      # parameters are not used
    (["nosuchplugin"], 1),
    (["/nonexistent/nbdkit-x-plugin.so"], 1),
])
def test_version_loads_the_plugin(impl, args, status):
    rc, out, err = run(BINARIES[impl], "--version", *args)
    assert rc == status, err
    if status == 0:
        lines = out.splitlines()
        assert len(lines) == 1 + len(args[:1])
        assert lines[0].startswith(impl + " ")
        if args:
            assert lines[1].split()[0] == "null"
    else:
        assert out == "" and "error" in err


@pytest.mark.parametrize("filt,status", [("delay", 0), ("nosuchfilter", 1)])
def test_version_with_filter(filt, status):
    """nbdkit-probing(1): --version --filter=F null fails unless F loads;
    the filter's line comes before the plugin's."""
    out = [run(BINARIES[impl], "--version", "--filter=" + filt, "null")
           for impl in ("nbdsrv", "nbdkit")]
    assert out[0][0] == out[1][0] == status
    if status == 0:
        names = [[l.split()[0] for l in o[1].splitlines()[1:]] for o in out]
        assert names[0] == names[1] == [filt, "null"]


@pytest.mark.nbdkit_plugin
def test_version_of_plugin_without_version():
    """A plugin without .version: its name alone, as nbdkit prints it."""
    plugin = os.path.join(BUILD, "tests", "plugins", "nbdkit-slow-plugin.so")
    lines = [run(BINARIES[impl], plugin, "--version")[1].splitlines()[1:]
             for impl in ("nbdsrv", "nbdkit")]
    assert lines[0] == lines[1] == ["slow"]


# -------------------------------------------------------- --dump-config

def test_dump_config_has_nbdkits_keys():
    ours, theirs = config_of(NBDSRV), config_of(NBDKIT)
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    # The nbdkit release whose interface nbdsrv implements.
    for key in ("version", "version_major", "version_minor"):
        assert ours[key] == theirs[key]
    assert re.fullmatch(r"\d+\.\d+\.\d+", ours["nbdsrv_version"])
    assert (ours["host_cpu"], ours["host_os"]) == \
        (theirs["host_cpu"], theirs["host_os"])
    assert ours["name"] == "nbdsrv"
    assert os.path.samefile(ours["binary"], NBDSRV)
    # TLS, with nbdkit's certificate directory, --selinux-label and
    # allocator=zstd (test_nbdkit_habits.py) exist, as in nbdkit.
    assert ours["tls"] == theirs["tls"] == "yes"
    assert ours["root_tls_certificates_dir"] == \
        theirs["root_tls_certificates_dir"]
    assert (ours["selinux"], ours["zstd"]) == ("yes", "yes")


def test_dump_config_plugindir_lists_loadable_plugins():
    """nbdkit-probing(1)'s loop: every nbdkit-*-plugin.so in plugindir
    loads with --version (a build-tree binary reports the build tree's
    plugins, which are what it loads first)."""
    plugindir = config_of(NBDSRV)["plugindir"]
    assert os.path.samefile(plugindir, PLUGINDIR)
    names = []
    for f in sorted(os.listdir(plugindir)):
        m = re.fullmatch(r"nbdkit-(.*)-plugin\.so", f)
        if m:
            rc, out, err = run(NBDSRV, os.path.join(plugindir, f),
                               "--version")
            assert rc == 0, err
            assert out.splitlines()[1].split()[0] == m.group(1)
            names.append(m.group(1))
    assert {"memory", "file", "sh", "data"} <= set(names)


# ------------------------------------------------------- option lists

@pytest.mark.parametrize("flag", ["--short-options", "--long-options"])
def test_option_lists(flag):
    """Every option nbdkit lists, nbdsrv lists too, and accepts."""
    ours = run(NBDSRV, flag)[1].split()
    theirs = run(NBDKIT, flag)[1].split()
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    assert len(ours) == len(set(ours))
    for opt in ours:
        rc, _, err = run(NBDSRV, opt, "--help")
        assert "unknown option" not in err, opt


# ---------------------------------------------------- script plugins

def test_script_plugin_by_name(tmp_path):
    """An executable nbdkit-NAME-plugin in a plugin directory runs as
    nbdkit runs it: exec'd with NAME, the options, then the parameters
    (here a wrapper that serves the memory plugin)."""
    name = "probetest%d" % os.getpid()
    path = os.path.join(PLUGINDIR, "nbdkit-%s-plugin" % name)
    argv = tmp_path / "argv"
    with open(path, "w") as f:
        f.write('#!/bin/sh\nprintf "%%s\\n" "$0" "$@" > %s\n'
                'exec %s memory "$@"\n' % (argv, NBDSRV))
    os.chmod(path, 0o755)
    try:
        rc, out, err = run(NBDSRV, "-U", "-", name, "size=3M", "-r",
                           "--run", 'nbdinfo --size "$uri"')
        assert (rc, out) == (0, "3145728\n"), err
        assert argv.read_text().splitlines() == [
            path, "-U", "-", "-r", "--run", 'nbdinfo --size "$uri"',
            "size=3M"]
    finally:
        os.unlink(path)


def test_debian_script_plugin_runs_as_under_nbdkit():
    """Debian's nbdkit-example4-plugin names /usr/bin/nbdkit perl in its
    #! line; without the perl plugin both servers fail the same way,
    through nbdkit."""
    results = [run(BINARIES[impl], "example4", "--version")
               for impl in ("nbdsrv", "nbdkit")]
    assert results[0] == results[1]
    assert results[0][0] == 1 and "perl" in results[0][2]


# --------------------------------------------------- bash completion

def complete(*words):
    script = ('source %s; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); '
              '_nbdsrv; printf "%%s\\n" "${COMPREPLY[@]}"' % COMPLETION)
    rc, out, err = run("bash", "-c", script, "bash", NBDSRV, *words)
    assert rc == 0, err
    return out.split()


def test_bash_completion():
    assert complete("--read") == ["--read-only", "--readonly"]
    assert "-U" in complete("-")
    assert "memory" in complete("mem")
    assert complete("-f", "--log", "s") == ["stderr", "syslog"]


def test_bash_completion_installed(tmp_path):
    rc, _, err = run("meson", "install", "-C", BUILD, "--no-rebuild",
                     "--quiet", "--destdir", str(tmp_path))
    assert rc == 0, err
    found = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path)
             for f in fs if f == "nbdsrv" and "bash-completion" in d]
    assert len(found) == 1 and found[0].endswith(
        "share/bash-completion/completions/nbdsrv")
