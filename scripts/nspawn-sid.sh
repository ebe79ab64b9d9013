#!/bin/sh
# Builds (once) and caches the Debian unstable (sid) root in which the
# engine matrix runs today's engines: Docker 28 (docker.io), podman 5 and
# etcd 3.5 (etcd-server).  They need a newer glibc than Debian 12's, so the
# tests run them in systemd-nspawn machines booted from throwaway overlays
# of this root (tests/integration/sidmachine.py); the cache itself is never
# written by a test.
#
# debootstrap (minbase, from the Debian mirror this machine's apt sources
# use; REGISTER_DEBIAN_MIRROR overrides it) makes the root; apt *inside the
# root* (systemd-nspawn, the root's own sources.list: sid on that mirror)
# installs the engines.  This machine's apt sources are only read, never
# changed.  One builder at a time (a lock); the package list is kept in
# .complete, and a cache built with another list is built again.
# ROOT.versions has "package version" lines of what was installed.
#
#   scripts/nspawn-sid.sh [DIR]     prints DIR (default
#                                   /var/cache/register-test/nspawn-sid)
set -eu
DIR=${1:-${REGISTER_SID_ROOT:-/var/cache/register-test/nspawn-sid}}
# podman 5: netavark (its network backend) and nftables (netavark's
# firewall driver) are Recommends only; procps and iproute2 for the tests
PKGS="docker.io podman netavark aardvark-dns nftables iptables etcd-server etcd-client procps iproute2"
if [ -e "$DIR/.complete" ] && [ "$(cat "$DIR/.complete")" = "$PKGS" ]; then
  echo "$DIR"
  exit 0
fi
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
flock 9
if [ -e "$DIR/.complete" ] && [ "$(cat "$DIR/.complete")" = "$PKGS" ]; then
  echo "$DIR"
  exit 0
fi
for tool in debootstrap systemd-nspawn; do
  command -v $tool >/dev/null || { echo "nspawn-sid: needs $tool (scripts/install-deps.sh installs it)" >&2; exit 1; }
done
mirror=$("$(dirname "$0")/debian-mirror.sh") || mirror=""
[ -n "$mirror" ] || { echo "nspawn-sid: no Debian mirror in the apt sources; set REGISTER_DEBIAN_MIRROR" >&2; exit 1; }
T="$DIR.tmp"
rm -rf "$T"
t0=$(date +%s)
echo "nspawn-sid: debootstrap sid into $DIR (once)" >&2
debootstrap --variant=minbase sid "$T" "$mirror" >"$DIR.log" 2>&1 || { tail -20 "$DIR.log" >&2; exit 1; }
# services that packages would start are not ours: the tests start their own
printf '#!/bin/sh\nexit 101\n' > "$T/usr/sbin/policy-rc.d"
chmod +x "$T/usr/sbin/policy-rc.d"
echo "register-sid" > "$T/etc/hostname"
# sid's Release file is valid for a week only: a mirror that lags behind (a
# snapshot) serves one that apt calls expired.  The signature is still
# checked; only the date is not.
echo 'Acquire::Check-Valid-Until "false";' > "$T/etc/apt/apt.conf.d/99register-test"
echo "nspawn-sid: apt-get install $PKGS (inside the root)" >&2
# the machine's network (no --private-network) for apt; its own sources
# (debootstrap wrote sid on $mirror), lists and cache
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -q -D "$T" -M "register-sid-build-$$" --register=no --keep-unit --resolv-conf=copy-host \
  --setenv=DEBIAN_FRONTEND=noninteractive \
  sh -c "apt-get -q update && apt-get -q install -y --no-install-recommends $PKGS && apt-get clean && rm -rf /var/lib/apt/lists/*" \
  >>"$DIR.log" 2>&1 || { tail -30 "$DIR.log" >&2; exit 1; }
: > "$DIR.versions.new"
for p in $PKGS containerd runc crun conmon; do
  v=$(chroot "$T" dpkg-query -W -f '${Version}' "$p" 2>/dev/null) || continue
  [ -n "$v" ] && echo "$p $v" >> "$DIR.versions.new"
done
rmdir /run/systemd/nspawn/propagate /run/systemd/nspawn/locks /run/systemd/nspawn 2>/dev/null || true
echo "$PKGS" > "$T/.complete"
rm -rf "$DIR"
mv "$T" "$DIR"
mv "$DIR.versions.new" "$DIR.versions"
echo "nspawn-sid: built in $(( $(date +%s) - t0 )) s, $(du -sh "$DIR" | cut -f1):" >&2
cat "$DIR.versions" >&2
echo "$DIR"
