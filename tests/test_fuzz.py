"""Every fuzz target replays its committed seeds, as a regression test.

The normal build links each tests/fuzz/fuzz-NAME.c with the replay
main () of tests/fuzz/replay.c (tests/fuzz/meson.build), so a target
that no longer compiles breaks `make`, and here each one runs over
tests/fuzz/corpus/fuzz-NAME/.  A target without an executable or
without seeds fails: it would otherwise rot unseen until `make fuzz`.
Under `make check SANITIZE=1` the targets are built with ASan and
UBSan, and their reports fail the test.
"""
import glob
import os
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.environ.get("NBDSRV_BUILD", os.path.join(ROOT, "build"))
FUZZ_SRC = os.path.join(ROOT, "tests", "fuzz")
FUZZ_BUILD = os.path.join(BUILD, "tests", "fuzz")

# Hang protection only: the seeds replay in well under a second.
REPLAY_TIMEOUT = 600

ENV = dict(os.environ)
ENV.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
ENV.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")

TARGETS = sorted(os.path.basename(p)[:-2]
                 for p in glob.glob(os.path.join(FUZZ_SRC, "fuzz-*.c")))


def test_there_are_targets():
    assert len(TARGETS) >= 5, TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_replays_its_seeds(target):
    exe = os.path.join(FUZZ_BUILD, target)
    seeds = os.path.join(FUZZ_SRC, "corpus", target)
    assert os.access(exe, os.X_OK), (
        "%s was not built: add %s to fuzz_targets in tests/fuzz/meson.build"
        % (exe, target))
    files = [f for f in glob.glob(os.path.join(seeds, "*"))
             if os.path.isfile(f)]
    assert files, ("no seeds in %s: commit a few inputs the target must "
                   "accept (tests/fuzz/make-seeds.py writes them)" % seeds)
    try:
        proc = subprocess.run([exe, seeds], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=ENV,
                              timeout=REPLAY_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail("%s hung on its seeds; output so far:\n%s"
                    % (target, (exc.output or b"").decode(errors="replace")))
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, (
        "%s failed on a seed in %s (exit %d); reproduce with `%s FILE`:\n%s"
        % (target, seeds, proc.returncode, exe, out[-6000:]))
    assert "replayed %d inputs" % len(files) in out, out[-2000:]
    for marker in ("runtime error:", "ERROR: AddressSanitizer",
                   "ERROR: LeakSanitizer"):
        assert marker not in out, out[-6000:]
