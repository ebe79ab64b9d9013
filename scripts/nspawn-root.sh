#!/bin/sh
# Builds (once) and caches the Debian 12 root that the systemd test boots
# with systemd-nspawn: debootstrap minbase plus systemd, dbus and procps
# (minbase has no /bin/kill), and the libraries register's .deb depends on,
# so that `dpkg -i` works inside without any network.  About 225 MB and
# 80 s; later runs reuse it.  The list of packages is kept in .complete: a
# cache built with another list is built again.  The test never writes to
# the cache (it boots an overlay of it).
#
#   scripts/nspawn-root.sh [DIR]     prints DIR (default
#                                    /var/cache/register-test/nspawn-bookworm)
# The mirror is the one this machine's apt sources use for Debian
# (REGISTER_DEBIAN_MIRROR overrides it).
set -eu
DIR=${1:-${REGISTER_NSPAWN_ROOT:-/var/cache/register-test/nspawn-bookworm}}
PKGS=systemd,systemd-sysv,dbus,procps,liblua5.4-0,lua-cjson,libuv1,libcurl4,init-system-helpers
if [ -e "$DIR/.complete" ] && [ "$(cat "$DIR/.complete")" = "$PKGS" ]; then
  echo "$DIR"
  exit 0
fi
mkdir -p "$(dirname "$DIR")"
# one builder at a time (two test runs, two checkouts)
exec 9>"$DIR.lock"
flock 9
if [ -e "$DIR/.complete" ] && [ "$(cat "$DIR/.complete")" = "$PKGS" ]; then
  echo "$DIR"
  exit 0
fi
mirror=$("$(dirname "$0")/debian-mirror.sh") || mirror=""
[ -n "$mirror" ] || { echo "nspawn-root: no Debian mirror in the apt sources; set REGISTER_DEBIAN_MIRROR" >&2; exit 1; }
rm -rf "$DIR.tmp"
echo "nspawn-root: debootstrap bookworm into $DIR (once)" >&2
debootstrap --variant=minbase --include="$PKGS" \
  bookworm "$DIR.tmp" "$mirror" >"$DIR.log" 2>&1 || { tail -20 "$DIR.log" >&2; exit 1; }
# no getty or other consoles: the test talks to it through nsenter
echo "register-test" > "$DIR.tmp/etc/hostname"
echo "$PKGS" > "$DIR.tmp/.complete"
rm -rf "$DIR"
mv "$DIR.tmp" "$DIR"
echo "$DIR"
