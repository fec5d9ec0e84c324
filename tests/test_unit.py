"""Run every C unit-test executable that Meson built, one pytest case each.

The executables live in build/tests/unit/ and are named test-*.  Each
prints its own "N passed, N failed" line and exits non-zero on failure.
Finding none is a failure, not a skip: it means the build step that
produces them did not run, and a green run would then prove nothing.
"""
import glob
import os
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.environ.get("NBDSRV_BUILD", os.path.join(ROOT, "build"))
UNIT_DIR = os.path.join(BUILD, "tests", "unit")

# Hang protection only: a unit test that runs this long is stuck.
UNIT_TIMEOUT = 600

# For a SANITIZE=1 build (ignored otherwise): UBSan stops at the first
# error so the test fails, and an allocation too large to satisfy
# returns NULL as glibc's does, instead of aborting, so the tests of
# out-of-memory paths run the same as unsanitized.
UNIT_ENV = dict(os.environ)
UNIT_ENV.setdefault("ASAN_OPTIONS",
                    "detect_leaks=1:allocator_may_return_null=1")
UNIT_ENV.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")


def find_unit_tests():
    """Return the built unit-test executables, sorted by name."""
    found = []
    for path in sorted(glob.glob(os.path.join(UNIT_DIR, "test-*"))):
        # Meson puts object files in test-NAME.p/ directories beside
        # the executables; only regular executable files are tests.
        if os.path.isfile(path) and os.access(path, os.X_OK):
            found.append(path)
    return found


UNIT_TESTS = find_unit_tests()


@pytest.mark.parametrize(
    "path", UNIT_TESTS or [None],
    ids=[os.path.basename(p) for p in UNIT_TESTS] or ["not-built"])
def test_unit(path):
    if path is None:
        pytest.fail("the C unit tests were not built: no executable "
                    "test-* in %s; run `make` (meson setup build && "
                    "ninja -C build) first" % UNIT_DIR)
    try:
        proc = subprocess.run([path], cwd=UNIT_DIR,
                              stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT,
                              env=UNIT_ENV,
                              timeout=UNIT_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        out = (exc.output or b"").decode(errors="replace")
        pytest.fail("%s did not finish within %d s (hung?); output so "
                    "far:\n%s" % (path, UNIT_TIMEOUT, out))
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, (
        "%s exited with status %d; its output:\n%s"
        % (path, proc.returncode, out))
