#!/usr/bin/python3
"""Remove what `meson install` put in place for a build directory.

    scripts/uninstall.py BUILD [DESTDIR]

Meson's own uninstall removes the files of the last install, wherever
it went; this one removes the files the build's current configuration
installs (its prefix and libdir) under DESTDIR, so `make uninstall`
takes the same PREFIX, LIBDIR and DESTDIR as `make install`.  The
directories nbdsrv owns (those with "nbdsrv" in their name) are removed
once empty; shared ones such as bin/ or man/man1/ stay.
"""
import json
import os
import subprocess
import sys


def installed_files(build):
    """Every file the build installs, as an absolute path without
    DESTDIR.  A directory installed whole (the headers) is listed by
    the files in its source."""
    out = subprocess.run(["meson", "introspect", build, "--installed"],
                         check=True, capture_output=True, text=True).stdout
    for src, dest in json.loads(out).items():
        if not os.path.isdir(src):
            yield dest
            continue
        for top, _, names in os.walk(src):
            rel = os.path.relpath(top, src)
            for name in names:
                yield os.path.normpath(os.path.join(dest, rel, name))


def remove_empty_parents(destdir, dest):
    """rmdir the parents of DEST (under DESTDIR) while they are empty
    and nbdsrv's own: a directory with "nbdsrv" in its path, counted
    without DESTDIR."""
    parent = os.path.dirname(dest)
    while "nbdsrv" in parent:
        try:
            os.rmdir(destdir + parent)
        except OSError:
            return
        parent = os.path.dirname(parent)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: scripts/uninstall.py BUILD [DESTDIR]")
    build = sys.argv[1]
    destdir = sys.argv[2] if len(sys.argv) == 3 else ""
    for dest in installed_files(build):
        path = destdir + dest if destdir else dest
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        print("removed %s" % path)
        remove_empty_parents(destdir, dest)


if __name__ == "__main__":
    main()
