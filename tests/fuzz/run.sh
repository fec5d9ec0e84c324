#!/bin/sh
# Build the libFuzzer targets in tests/fuzz/ with ASan+UBSan and run
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
#   FUZZ_BUILD/fuzz-TARGET FUZZ_BUILD/artifacts/TARGET/crash-...
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

cflags="-g -O1 -std=gnu11 -D_GNU_SOURCE -Wall -Wno-unused-parameter
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
  -fno-omit-frame-pointer
  -I$out -I$top/include -I$top/common/protocol -I$top/common/include
  -I$top/server"

mkdir -p "$out"
# What Meson's configure_file writes; the fuzzers load no plugin.
cat >"$out/config.h.new" <<EOF
#define PACKAGE_VERSION "fuzz"
#define BUILD_PLUGINDIR "$out/plugins"
#define PLUGINDIR "$out/plugins"
#define NBDKIT_PLUGINDIR "/usr/lib/x86_64-linux-gnu/nbdkit/plugins"
EOF
if cmp -s "$out/config.h.new" "$out/config.h"; then
  rm "$out/config.h.new"
else
  mv "$out/config.h.new" "$out/config.h"
fi

# The sources each target links besides its own file.
sources_of () {
  case $1 in
  fuzz-handshake)
    for f in "$top"/server/*.c; do
      [ "$(basename "$f")" = main.c ] || echo "$f"
    done ;;
  fuzz-validate)
    echo "$top/server/protocol-validate.c $top/server/blockstatus.c"
    echo "$top/server/extents.c" ;;
  fuzz-parse)
    echo "$top/server/parse.c" ;;
  fuzz-data-format)
    echo "$top/plugins/data/format.c" ;;
  fuzz-partition)
    echo "$top/plugins/partitioning/ptable.c" ;;
  *)
    echo "run.sh: no source list for $1" >&2
    return 1 ;;
  esac
}

# Extra include directories a target needs.
includes_of () {
  case $1 in
  fuzz-data-format) echo "-I$top/plugins/data" ;;
  fuzz-partition) echo "-I$top/plugins/partitioning" ;;
  esac
}

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
  # A target for code not in the tree yet (a plugin still being
  # written) is skipped, not failed.
  missing=
  for f in $(sources_of "$t"); do
    [ -f "$f" ] || missing="$missing $f"
  done
  if [ -n "$missing" ]; then
    echo "=== $t: skipped, missing:$missing"
    summary="$summary
$t: skipped (missing$missing)"
    continue
  fi
  echo "=== $t: building"
  # shellcheck disable=SC2046,SC2086
  $cc $cflags $(includes_of "$t") -o "$out/$t" "$src" $(sources_of "$t") \
    -lpthread -ldl -lm

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
     "$out/$t" -timeout=20 -rss_limit_mb=3072 -max_len=70000 \
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
