#!/bin/sh
# Bounded soak test: many clients doing verified random I/O against one
# nbdsrv on a private Unix socket, with the server's memory, fds and
# threads sampled throughout.  Not part of `make check` (it runs for
# minutes); prints figures at the end and exits non-zero on any data
# mismatch, client error or server failure.
#
#   tests/soak/soak.sh                   3 minutes, 4 fio jobs, 4 libnbd
#   SOAK_SECONDS=600 tests/soak/soak.sh  longer
#
# Environment: SOAK_SECONDS (180), SOAK_FIO_JOBS (4), SOAK_NBD_CLIENTS
# (4), NBDSRV_BUILD (build/ at the top of the tree), SOAK_DIR (a new
# directory under /tmp; kept, with the logs).
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${SOAK_SECONDS:-180}
fio_jobs=${SOAK_FIO_JOBS:-4}
nbd_clients=${SOAK_NBD_CLIENTS:-4}
build=${NBDSRV_BUILD:-$top/build}
dir=${SOAK_DIR:-$(mktemp -d /tmp/nbdsrv-soak.XXXXXX)}
python=/usr/bin/python3

[ -x "$build/nbdsrv" ] || { echo "soak: no $build/nbdsrv: run make" >&2;
                            exit 1; }
command -v fio >/dev/null || { echo "soak: fio is missing" >&2; exit 1; }
mkdir -p "$dir"
sock=$dir/sock
# 128 MiB per fio job, then 128 MiB per libnbd client.
size_mib=$(( (fio_jobs + nbd_clients) * 128 ))

# The server, in the foreground, reaped on every exit path.
"$build/nbdsrv" -f -U "$sock" memory size=${size_mib}M \
  2>"$dir/server.err" &
server=$!
cleanup () {
  if kill -0 "$server" 2>/dev/null; then
    kill -KILL "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

i=0
while ! [ -S "$sock" ]; do
  i=$((i + 1))
  if [ $i -gt 600 ] || ! kill -0 "$server" 2>/dev/null; then
    echo "soak: the server did not start; see $dir/server.err" >&2
    exit 1
  fi
  sleep 0.1
done
uri="nbd+unix:///?socket=$sock"
echo "soak: nbdsrv pid $server, ${size_mib} MiB memory disk, ${seconds}s," \
     "$fio_jobs fio jobs + $nbd_clients libnbd clients; logs in $dir"

# Sample VmRSS, fds and threads every 2 s while the clients run.
sampler () {
  while kill -0 "$server" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' /proc/"$server"/status 2>/dev/null)
    thr=$(awk '/^Threads:/ {print $2}' /proc/"$server"/status 2>/dev/null)
    fds=$(ls /proc/"$server"/fd 2>/dev/null | wc -l)
    [ -n "$rss" ] && echo "$rss $fds $thr"
    sleep 2
  done
}
sampler >"$dir/samples" &
sampler_pid=$!
base_fds=$(ls /proc/"$server"/fd | wc -l)

# fio: each job its own 128 MiB region, random writes of 4k..256k, each
# block checked by a crc32c read-back while the run goes on.
timeout $((seconds + 120)) fio --name=soak --ioengine=nbd --uri="$uri" \
  --rw=randwrite --bsrange=4k-256k --iodepth=16 --numjobs="$fio_jobs" \
  --size=128M --offset_increment=128M --time_based --runtime="$seconds" \
  --verify=crc32c --verify_backlog=256 --verify_fatal=1 \
  --group_reporting --output="$dir/fio.out" >/dev/null 2>"$dir/fio.err" &
fio_pid=$!

# libnbd: clients that write random-length random data with many
# commands in flight, remember it and read it back.
timeout $((seconds + 120)) $python "$top/tests/soak/nbdclients.py" \
  "$uri" "$seconds" "$nbd_clients" $((fio_jobs * 128)) \
  >"$dir/nbd.out" 2>&1 &
nbd_pid=$!

status=0
wait "$fio_pid" || { echo "soak: fio failed:"; tail -n 20 "$dir/fio.err";
                     status=1; }
wait "$nbd_pid" || status=1

# Connections gone: fds back to the baseline, then a clean SIGTERM.
i=0
while [ "$(ls /proc/"$server"/fd | wc -l)" -gt "$base_fds" ] && [ $i -lt 600 ]
do
  i=$((i + 1)); sleep 0.1
done
end_fds=$(ls /proc/"$server"/fd | wc -l)
hwm=$(awk '/^VmHWM:/ {print $2}' /proc/"$server"/status)
kill -TERM "$server"
server_status=0
wait "$server" || server_status=$?
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true

echo "=== fio ($fio_jobs jobs, QD16, randwrite 4k-256k, crc32c verify)"
grep -E "^ *(write|read):|IOPS|err=" "$dir/fio.out" | sed 's/^/  /'
echo "=== libnbd ($nbd_clients clients)"
sed 's/^/  /' "$dir/nbd.out"
echo "=== server"
awk '{ if (NR == 1 || $1 > rmax) rmax = $1; if (NR == 1 || $1 < rmin) rmin = $1;
       if ($2 > fmax) fmax = $2; if ($3 > tmax) tmax = $3 }
     END { printf "  VmRSS %d..%d MiB over %d samples; max fds %d, " \
                  "max threads %d\n", rmin / 1024, rmax / 1024, NR, fmax, tmax }' \
  "$dir/samples"
echo "  VmHWM $((hwm / 1024)) MiB; fds $base_fds before, $end_fds after;" \
     "exit status $server_status after SIGTERM"
if grep -E "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer" \
     "$dir/server.err" >/dev/null; then
  echo "soak: sanitizer report in $dir/server.err"
  status=1
fi
[ "$server_status" -eq 0 ] || status=1
[ "$end_fds" -le "$base_fds" ] || { echo "soak: fd leak"; status=1; }
[ $status -eq 0 ] && echo "soak: PASS" || echo "soak: FAIL"
exit $status
