#!/bin/sh
# Install the Debian packages nbdsrv needs, only those missing.
#   scripts/install-deps.sh build   what `make` needs
#   scripts/install-deps.sh test    what `make check` needs as well
# Idempotent and quiet when everything is present; uses sudo when not
# root.  Never asks questions (CI has no standard input).
set -eu

build_pkgs="gcc make meson ninja-build pkg-config"
test_pkgs="nbdkit nbdkit-plugin-dev libnbd-bin python3-libnbd python3-pytest
  qemu-utils fio nbd-server clang-14 libclang-rt-14-dev"

want=$build_pkgs
[ "${1:-build}" = test ] && want="$build_pkgs $test_pkgs"

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
