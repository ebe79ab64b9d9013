#!/bin/sh
# Prints the Debian archive this machine's apt sources use (the first
# `.../debian` URI, deb822 or one-line format), or REGISTER_DEBIAN_MIRROR
# when set; exits 1 when there is none.  Used by fetch-debian13.sh and
# nspawn-root.sh; the machine's apt sources are only read.
set -eu
mirror=${REGISTER_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
fi
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
fi
[ -n "$mirror" ] || exit 1
echo "$mirror"
