#!/bin/sh
# Install the Debian packages nbdsrv needs, only those missing.
#   scripts/install-deps.sh build   what `make` needs
#   scripts/install-deps.sh test    what `make check` needs as well
#   scripts/install-deps.sh --list [build|test]   print them, install nothing
# The packages are listed once, in scripts/packages.txt.  Idempotent and
# quiet when everything is present; uses sudo when not root.  Never asks
# questions (CI has no standard input).
set -eu

table=$(dirname "$0")/packages.txt

list=false
if [ "${1:-}" = --list ]; then
  list=true
  shift
fi
set_name=${1:-build}
case $set_name in
  build|test) ;;
  *) echo "install-deps.sh: unknown set '$set_name': use build or test" >&2
     exit 2 ;;
esac

# The second column of the lines of the build set, and of the test set
# too when asked for it.
want=$(awk -v set="$set_name" '
  /^[ \t]*(#|$)/ { next }
  $1 == "build" || ($1 == "test" && set == "test") { print $2 }
' "$table")
if $list; then
  echo "$want"
  exit 0
fi

missing=
for p in $want; do
  status=$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null || true)
  case "$status" in
    *"install ok installed"*) ;;
    *) missing="$missing $p" ;;
  esac
done
[ -z "$missing" ] && exit 0

echo "installing:$missing"
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq </dev/null
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing </dev/null
