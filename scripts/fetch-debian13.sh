#!/bin/sh
# Fetches Debian 13 (trixie) packages for the engine matrix into a cache
# directory and unpacks them there; nothing is installed and this machine's
# apt sources are never changed.  apt runs with a private sources list,
# private package lists and a private cache:
#
#   apt-get -o Dir::Etc::sourcelist=FILE -o Dir::Etc::sourceparts=/dev/null \
#           -o Dir::State::Lists=DIR -o Dir::Cache=DIR update
#   apt-get ... download PKG
#   dpkg-deb -x PKG.deb DIR
#
# The mirror is the one this machine's apt sources already use for Debian
# (REGISTER_DEBIAN_MIRROR overrides it).  What it leaves, below CACHE
# (default /var/cache/register-test/debian13):
#
#   CACHE/docker.io/usr/sbin/dockerd     Docker 26.1 (runs with Debian 12's
#   CACHE/docker.io/usr/bin/docker       containerd and runc)
#   CACHE/etcd-server/usr/bin/etcd       etcd 3.5
#   CACHE/versions                       "package version" lines
#
# A second run with the packages there already does nothing (no network).
#
#   scripts/fetch-debian13.sh [CACHE]
set -eu

CACHE=${1:-${REGISTER_DEBIAN13_CACHE:-/var/cache/register-test/debian13}}
PACKAGES="docker.io etcd-server"

have=1
for p in $PACKAGES; do
  grep -q "^$p " "$CACHE/versions" 2>/dev/null || have=0
done
if [ $have = 1 ]; then
  echo "$CACHE"
  exit 0
fi

mirror=$("$(dirname "$0")/debian-mirror.sh") || mirror=""
if [ -z "$mirror" ]; then
  echo "fetch-debian13: no Debian mirror in this machine's apt sources; set REGISTER_DEBIAN_MIRROR" >&2
  exit 1
fi

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [ ! -r "$keyring" ]; then
  echo "fetch-debian13: $keyring missing (package debian-archive-keyring)" >&2
  exit 1
fi

mkdir -p "$CACHE"
A="$CACHE/apt"
rm -rf "$A"
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/debs"
echo "deb [signed-by=$keyring] $mirror trixie main" > "$A/sources.list"
: > "$A/status"
set -- -o Dir::Etc::sourcelist="$A/sources.list" -o Dir::Etc::sourceparts=/dev/null \
  -o Dir::State::Lists="$A/lists" -o Dir::Cache="$A/cache" -o Dir::State::status="$A/status" \
  -o Debug::NoLocking=1 -o APT::Sandbox::User=root -q
echo "fetch-debian13: apt update (trixie, private lists in $A)" >&2
apt-get "$@" update >&2
: > "$CACHE/versions.new"
for p in $PACKAGES; do
  (cd "$A/debs" && apt-get "$@" download "$p" >&2)
  deb=$(ls "$A/debs/${p}_"*.deb | head -n 1)
  rm -rf "$CACHE/$p"
  mkdir -p "$CACHE/$p"
  dpkg-deb -x "$deb" "$CACHE/$p"
  echo "$p $(dpkg-deb -f "$deb" Version)" >> "$CACHE/versions.new"
done
mv "$CACHE/versions.new" "$CACHE/versions"
rm -rf "$A"
cat "$CACHE/versions" >&2
echo "$CACHE"
