#!/bin/sh
# Builds gliderlabs/registrator v7 (its last release) with its etcd backend
# only, for bench/traffic.py --registrator: the side-by-side rows.
#
#   bench/registrator.sh [OUT]        default OUT: /var/cache/register-test/registrator
#
# Go and three of registrator's libraries come from Debian 12 (golang-go
# 1.19, go-dockerclient 1.8.1, jsonparser, backoff 4: the calls registrator
# makes are the same); registrator itself, go-etcd (v2.0.0 and v0.4.6, as
# its go.mod pins them) and gliderlabs/pkg are cloned from GitHub, or taken
# from bare repositories under $REGISTRATOR_MIRROR (owner+name/repo, as the
# workplace's mirror keeps them), since this machine may have no GitHub.
# modules.go is cut to the etcd backend (the others need consul's and
# zookeeper's libraries, which Debian lacks); nothing else is changed.
# Built in GOPATH mode (GO111MODULE=off) against /usr/share/gocode.
set -eu
out=${1:-/var/cache/register-test/registrator}
work=$(mktemp -d /tmp/rregr.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM

need=""
for p in golang-go golang-github-fsouza-go-dockerclient-dev golang-github-buger-jsonparser-dev \
    golang-github-cenkalti-backoff-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
    apt-get install -y -q $need >/dev/null
fi

# get OWNER/NAME REV DIR: the tree of REV of github.com/OWNER/NAME in DIR
get() {
    mkdir -p "$3"
    m="${REGISTRATOR_MIRROR:-}/$(echo "$1" | tr / +)/repo"
    if [ -n "${REGISTRATOR_MIRROR:-}" ] && [ -d "$m" ]; then
        git --git-dir="$m" archive "$2" | tar -x -C "$3"
    else
        git clone -q "https://github.com/$1" "$work/clone"
        git -C "$work/clone" archive "$2" | tar -x -C "$3"
        rm -rf "$work/clone"
    fi
}
g=$work/gopath/src
get gliderlabs/registrator v7 "$g/github.com/gliderlabs/registrator"
get gliderlabs/pkg HEAD "$g/github.com/gliderlabs/pkg"
get coreos/go-etcd v2.0.0 "$g/github.com/coreos/go-etcd"
get coreos/go-etcd v0.4.6 "$g/gopkg.in/coreos/go-etcd.v0"
printf 'package main\n\nimport _ "github.com/gliderlabs/registrator/etcd"\n' \
    >"$g/github.com/gliderlabs/registrator/modules.go"
mkdir -p "$out"
cd "$g/github.com/gliderlabs/registrator"
GOPATH="$work/gopath:/usr/share/gocode" GO111MODULE=off GOFLAGS= GOCACHE="$work/cache" \
    go build -ldflags "-X main.Version=$(cat VERSION)" -o "$out/registrator" .
echo "$out/registrator"
