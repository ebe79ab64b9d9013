#!/bin/sh
# Builds register and runs it for real, in the foreground, on this machine.
# It uses the Docker daemon at $DOCKER_HOST (default /var/run/docker.sock)
# and etcd at $ETCD_ENDPOINT (default http://127.0.0.1:2379) when they
# answer; when they do not, it starts its own in a temporary directory
# (etcd with the v2 API on loopback, dockerd without iptables on a bridge
# of its own, regrun0, 172.31.252.1/24; the machine's docker0 is left
# alone) and stops them again on exit, the bridge too (Ctrl-C stops
# register first, then them).  Arguments
# go to register (e.g. --ttl 30).
#
#   sudo scripts/run.sh                     HOST_IP defaults to 127.0.0.1
#   sudo HOST_IP=10.0.0.5 scripts/run.sh --log-level debug
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc 2>/dev/null || echo 2)"

T=$(mktemp -d /tmp/register-run.XXXXXX)
pids=""
bridge=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null || true; done
  for p in $pids; do wait "$p" 2>/dev/null || true; done
  [ -z "$bridge" ] || ip link del "$bridge" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT INT TERM

export HOST_IP="${HOST_IP:-127.0.0.1}"
export ETCD_ENDPOINT="${ETCD_ENDPOINT:-http://127.0.0.1:2379}"
first_etcd=$(echo "$ETCD_ENDPOINT" | cut -d, -f1)
case "$first_etcd" in *://*) ;; *) first_etcd="http://$first_etcd" ;; esac
if curl -sf "$first_etcd/v2/keys/" >/dev/null 2>&1; then
  echo "run: using etcd at $ETCD_ENDPOINT" >&2
else
  port=2379
  curl -s "http://127.0.0.1:$port/health" >/dev/null 2>&1 && port=23790
  echo "run: starting etcd (v2 enabled) on 127.0.0.1:$port" >&2
  peer="http://127.0.0.1:$((port + 1))"
  setsid etcd --data-dir "$T/etcd" --enable-v2=true \
    --listen-client-urls "http://127.0.0.1:$port" \
    --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "default=$peer" >"$T/etcd.log" 2>&1 &
  pids="$pids $!"
  export ETCD_ENDPOINT="http://127.0.0.1:$port"
  i=0
  until curl -sf "$ETCD_ENDPOINT/health" >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 100 ] || { cat "$T/etcd.log" >&2; exit 1; }
    sleep 0.1
  done
fi

export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"
sock=${DOCKER_HOST#unix://}
if [ "$sock" != "$DOCKER_HOST" ] && curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
  echo "run: using Docker at $DOCKER_HOST" >&2
elif [ "$sock" = "$DOCKER_HOST" ]; then
  echo "run: using Docker at $DOCKER_HOST" >&2
else
  echo "run: starting dockerd on $T/docker.sock" >&2
  bridge=regrun0
  ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
  ip -4 addr show "$bridge" | grep -q 172.31.252.1 ||
    ip addr add 172.31.252.1/24 dev "$bridge"
  ip link set "$bridge" up
  setsid dockerd --host "unix://$T/docker.sock" --data-root /var/tmp/register-run-docker \
    --exec-root "$T/x" --pidfile "$T/docker.pid" --iptables=false \
    --ip6tables=false --storage-driver=vfs --bridge "$bridge" \
    >"$T/dockerd.log" 2>&1 &
  pids="$pids $!"
  export DOCKER_HOST="unix://$T/docker.sock"
  i=0
  until curl -sf --unix-socket "$T/docker.sock" http://d/_ping >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 300 ] || { cat "$T/dockerd.log" >&2; exit 1; }
    sleep 0.1
  done
fi

cat >&2 <<MSG
run: register is starting (HOST_IP=$HOST_IP).  In another shell:
       DOCKER_HOST=$DOCKER_HOST docker run -d -p 127.0.0.1::80 <image>
       ETCDCTL_API=2 etcdctl --endpoints $ETCD_ENDPOINT ls --recursive /registered
     Ctrl-C stops it (registrations stay; --deregister-on-exit removes them).
MSG
setsid build/register "$@" &
rp=$!
trap 'kill -TERM $rp 2>/dev/null; wait $rp; cleanup' INT TERM
wait $rp || true
