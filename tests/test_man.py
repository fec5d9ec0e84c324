"""The man pages that `make` builds from docs/*.md (docs/meson.build).

Each page is rendered with `man -l` as a user would read it, with every
groff warning on: any warning fails.  Its NAME section must give the
page's own name, as lexgrog (what mandb uses for whatis and apropos)
reads it.  Every plugin, every documented filter and the two API pages
must have a page, all named nbdsrv*, so none replaces one of nbdkit's.
"""
import glob
import os
import re
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.environ.get("NBDSRV_BUILD", os.path.join(ROOT, "build"))
MAN_DIR = os.path.join(BUILD, "docs")

# Hang protection only.
MAN_TIMEOUT = 120

# man prints groff's warnings on stderr and still exits 0; "w" is
# groff's name for every warning (its "all" leaves some out).  man-db's
# seccomp sandbox is off because some containers refuse its filter,
# which would fail every page for a reason that is not the page's.
MAN_ENV = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80",
               MAN_DISABLE_SECCOMP="1")


def built_pages():
    return sorted(glob.glob(os.path.join(MAN_DIR, "*.[137]")))


def module_dirs(kind):
    """The plugins (or filters) with a directory in the tree and a
    .so in the build (rbd is built only where librbd is found)."""
    top = os.path.join(ROOT, kind + "s")
    return sorted(n for n in os.listdir(top)
                  if os.path.isdir(os.path.join(top, n)) and
                  os.path.exists(os.path.join(
                      BUILD, kind + "s", "nbdkit-%s-%s.so" % (n, kind))))


def test_every_page_is_built():
    names = {os.path.basename(p) for p in built_pages()}
    want = {"nbdsrv.1", "nbdsrv-plugin.3", "nbdsrv-filter.3",
            "nbdsrv-filters.7"}
    want |= {"nbdsrv-%s-plugin.1" % n for n in module_dirs("plugin")}
    want |= {"nbdsrv-%s-filter.1" % n for n in module_dirs("filter")
             if os.path.exists(os.path.join(
                 ROOT, "docs", "nbdkit-%s-filter.md" % n))}
    assert sorted(want - names) == []
    assert sorted(n for n in names if not n.startswith("nbdsrv")) == []


@pytest.mark.parametrize("page", built_pages(), ids=os.path.basename)
def test_page_renders_without_warnings(page):
    r = subprocess.run(["man", "--warnings=w", "-E", "UTF-8", "-l", page],
                       env=MAN_ENV, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=MAN_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    name = os.path.basename(page).rsplit(".", 1)[0]
    assert "NAME" in r.stdout and name in r.stdout


@pytest.mark.parametrize("page", built_pages(), ids=os.path.basename)
def test_page_names_itself(page):
    name = os.path.basename(page).rsplit(".", 1)[0]
    r = subprocess.run(["lexgrog", page], capture_output=True, text=True,
                       timeout=MAN_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r': "(.*?) - (.*)"$', r.stdout.strip())
    assert m, r.stdout
    assert m.group(1) == name
    assert m.group(2).strip()


def test_a_warning_fails(tmp_path):
    """The check above can fail: a page with an unknown macro warns."""
    bad = tmp_path / "bad.1"
    bad.write_text('.TH bad 1\n.SH NAME\nbad \\- page\n.NOSUCHMACRO\n')
    r = subprocess.run(["man", "--warnings=w", "-E", "UTF-8", "-l",
                        str(bad)], env=MAN_ENV, capture_output=True,
                       text=True, timeout=MAN_TIMEOUT)
    assert "NOSUCHMACRO" in r.stderr
