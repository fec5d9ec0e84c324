#!/bin/sh
# Build the libFuzzer targets in tests/fuzz/ with ASan+UBSan (a Meson
# build in FUZZ_BUILD with -Dfuzzing=true) and run
# each for FUZZ_SECONDS seconds from its committed seed corpus.
#
#   tests/fuzz/run.sh                  every target, FUZZ_SECONDS each
#   tests/fuzz/run.sh fuzz-parse       only the targets named
#   FUZZ_SECONDS=0 tests/fuzz/run.sh   build, then run each seed once
#
# Environment: FUZZ_SECONDS (default 60), FUZZ_BUILD (default
# build-fuzz/ at the top of the tree), FUZZ_CC (default clang-14).
# New inputs found go to FUZZ_BUILD/corpus/TARGET/, never into the
# committed seeds; a crash leaves FUZZ_BUILD/artifacts/TARGET/crash-*
# and makes the script exit 1.  Reproduce one with
#   FUZZ_BUILD/tests/fuzz/fuzz-TARGET FUZZ_BUILD/artifacts/TARGET/crash-...
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
fuzzdir=$top/tests/fuzz
seconds=${FUZZ_SECONDS:-60}
out=${FUZZ_BUILD:-$top/build-fuzz}
cc=${FUZZ_CC:-clang-14}

if ! command -v "$cc" >/dev/null; then
  echo "run.sh: $cc not found: run 'scripts/install-deps.sh test'" >&2
  exit 1
fi

# The targets and the sources each links are listed once, in
# tests/fuzz/meson.build; -Dfuzzing=true links them with libFuzzer.
mkdir -p "$out"
if [ ! -f "$out/build.ninja" ]; then
  CC=$cc meson setup "$out" -Dfuzzing=true -Dwerror=false \
    -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug \
    -Doptimization=1 \
    -Dc_args="-fno-sanitize-recover=all -fno-omit-frame-pointer" \
    >"$out/setup.log" 2>&1 || { cat "$out/setup.log" >&2; exit 1; }
fi

if [ $# -gt 0 ]; then
  targets=$*
else
  targets=
  for f in "$fuzzdir"/fuzz-*.c; do
    targets="$targets $(basename "$f" .c)"
  done
fi

status=0
summary=
for t in $targets; do
  src=$fuzzdir/$t.c
  [ -f "$src" ] || { echo "run.sh: no $src" >&2; exit 1; }
  echo "=== $t: building"
  ninja -C "$out" "tests/fuzz/$t" >"$out/$t.build.log" 2>&1 ||
    { cat "$out/$t.build.log" >&2; exit 1; }

  seeds=$fuzzdir/corpus/$t
  work=$out/corpus/$t
  art=$out/artifacts/$t
  mkdir -p "$seeds" "$work" "$art"
  log=$out/$t.log
  echo "=== $t: running for ${seconds}s (log: $log)"
  if [ "$seconds" -eq 0 ]; then
    set -- -runs=0 "$seeds"
  else
    set -- -max_total_time="$seconds" "$work" "$seeds"
  fi
  if ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
     UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
     "$out/tests/fuzz/$t" -timeout=20 -rss_limit_mb=3072 -max_len=70000 \
       -print_final_stats=1 -artifact_prefix="$art/" "$@" >"$log" 2>&1
  then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    summary="$summary
$t: ok, ${runs:-?} executions"
  else
    status=1
    summary="$summary
$t: FAILED, see $log and $art/"
    tail -n 40 "$log"
  fi
done
echo "=== summary$summary"
exit $status
