"""-D NAME.FLAG=N as nbdkit 1.32 takes it.

A flag for a name that is not loaded, or for a variable the plugin
lacks, is a warning and the server serves (scripts pass -D for an
optional filter); a malformed -D is an error.  Each case runs under
both servers with the same command line; stderr must be the same but
for the program name, and for the parse error's own wording, which
nbdsrv gives with the valid range (server/parse.c).
"""
import subprocess

import pytest

from conftest import BINARIES, server_env

RUN = 'nbdinfo --size "$uri"'

# (argument, served): served is False for the malformed ones.
CASES = [
    ("memory.nosuchflag=1", True),
    ("nosuch.flag=1", True),
    ("nosuch.flag=-1", True),
    ("nosuch.flag=0x10", True),
    ("a.b.c=1", True),
    ("memory.a.b=1", True),
    ("memory.a-b.c=1", True),
    ("nbdkit.foo=1", True),
    ("nbdkit.backend.datapath=0", True),
    ("nbdkit.backend.controlpath=0", True),
    ("nbdkit.tls.log=2", True),
    ("foo", False),
    ("foo.bar", False),
    ("foo=1", False),
    (".x=1", False),
    ("foo.=1", False),
    ("memory.x=", False),
    ("memory.x=1 ", False),
    ("memory.x=abc", False),
    ("memory.x=99999999999", False),
]


def run(impl, *args):
    dflags = [a for arg in args for a in ("-D", arg)]
    p = subprocess.run([BINARIES[impl], "-U", "-"] + dflags + [
                        "memory", "1M", "--run", RUN], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60,
                       env=server_env(impl))
    return p.returncode, p.stdout, p.stderr.replace(impl + ":", "PROG:")


@pytest.mark.parametrize("arg, served", CASES)
def test_debug_flag_like_nbdkit(arg, served):
    ours = run("nbdsrv", arg)
    theirs = run("nbdkit", arg)
    if served:
        assert ours == theirs == (0, "1048576\n", ours[2])
        assert ours[2].startswith("PROG: warning: ") or \
            arg.startswith("nbdkit.backend") or arg.startswith("nbdkit.tls")
    else:
        assert ours[:2] == theirs[:2] == (1, "")
        # The last line is nbdkit's own; a parse error may come before.
        last = "PROG: -D (Debug Flag) must have the format NAME.FLAG=N"
        assert ours[2].splitlines()[-1] == theirs[2].splitlines()[-1] == last
        assert len(ours[2].splitlines()) == len(theirs[2].splitlines())


def test_debug_flags_warn_in_order():
    ours = run("nbdsrv", "b.y=1", "memory.z=1", "a.y=1")
    assert ours == run("nbdkit", "b.y=1", "memory.z=1", "a.y=1")
    assert ours[2].splitlines() == [
        "PROG: warning: -D memory.z: memory does not contain a global "
        "variable called memory_debug_z",
        "PROG: warning: debug flag -D a.y was not used",
        "PROG: warning: debug flag -D b.y was not used"]


def test_debug_flag_for_a_filter():
    """A loaded filter takes its flags as the plugin does: a variable it
    lacks is the 'does not contain' warning, not 'was not used'."""
    out = {}
    for impl in ("nbdsrv", "nbdkit"):
        p = subprocess.run([BINARIES[impl], "-U", "-", "--filter=delay",
                            "-D", "delay.x=1", "-D", "nope.z=1", "memory",
                            "1M", "--run", RUN], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
        out[impl] = (p.returncode, p.stdout,
                     p.stderr.replace(impl + ":", "PROG:"))
    assert out["nbdsrv"] == out["nbdkit"]
    assert out["nbdsrv"] == (0, "1048576\n",
                             "PROG: warning: -D delay.x: delay does not "
                             "contain a global variable called "
                             "delay_debug_x\n"
                             "PROG: warning: debug flag -D nope.z was not "
                             "used\n")
