#!/bin/sh
# Installs what register needs to build, run and test on Debian 12
# (bookworm).  Does nothing when everything is there already.
set -eu

PACKAGES="build-essential cmake pkg-config clang libclang-rt-14-dev clang-format valgrind
liblua5.4-dev lua5.4 lua-cjson-dev libuv1-dev libcurl4-openssl-dev libssl-dev libseccomp-dev
etcd-server etcd-client docker.io busybox-static
python3 curl iproute2 procps openssl ca-certificates
dpkg-dev file debootstrap lintian prometheus
podman containernetworking-plugins catatonit systemd-container
haproxy nginx"
# prometheus is here for promtool (the /metrics test checks the exposition
# with it); the tests fall back to their own strict parser without it.
# podman (4.3.1) serves the Docker API for the engine matrix; systemd-container
# (systemd-nspawn) boots the Debian 12 root the systemd test uses.  haproxy
# and nginx check what the renderers of `register watch` write, and haproxy
# carries the traffic test's requests.  Docker 26
# and etcd 3.5 come from Debian 13 through scripts/fetch-debian13.sh, never
# through this machine's apt sources; Docker 28, podman 5 and etcd 3.5.30
# from Debian unstable, installed by apt inside the root that
# scripts/nspawn-sid.sh debootstraps (debootstrap, systemd-container) on
# the first test that needs them.

missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing packages:$missing (run as root to install them)" >&2
  exit 1
fi
echo "install-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# services these packages would start are not ours: the tests start their own
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
# other installs may hold the dpkg lock (several checkouts share a machine)
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $missing
