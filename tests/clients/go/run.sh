#!/usr/bin/env bash
# go-redis v5 (the real Go client, unchanged) through respipe.
#
#   tests/clients/go/run.sh                      # through respipe (builds it first)
#   RESPIPE_GO_DIRECT=1 tests/clients/go/run.sh  # the same tests against redis-server itself
#   tests/clients/go/run.sh -run 'TestPubSub'    # extra arguments go to `go test`
#
# Needs redis-server. Installs Debian's golang-go and golang-gopkg-redis.v5-dev with
# apt-get when missing (as root); no Go module proxy is used: the tests build in
# GOPATH mode against /usr/share/gocode. RESPIPE_BIN overrides the proxy binary
# (default target/debug/respipe, built with `cargo build --locked -q`).
# Working directories (GOCACHE, GOPATH, logs) live under target/go-client/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
gocode=/usr/share/gocode

die() {
    echo "tests/clients/go: $*" >&2
    exit 1
}

if ! command -v redis-server >/dev/null 2>&1; then
    die "redis-server is not installed (apt-get install redis-server, or run scripts/test once)"
fi

missing=()
command -v go >/dev/null 2>&1 || missing+=(golang-go)
[ -f "$gocode/src/gopkg.in/redis.v5/redis.go" ] || missing+=(golang-gopkg-redis.v5-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: install them with apt-get as root"
    echo "tests/clients/go: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends golang-go golang-gopkg-redis.v5-dev >/dev/null
fi

if [ "${RESPIPE_GO_DIRECT:-}" != 1 ]; then
    if [ -z "${RESPIPE_BIN:-}" ]; then
        (cd "$root" && cargo build --locked -q)
        RESPIPE_BIN="$root/target/debug/respipe"
    fi
    [ -x "$RESPIPE_BIN" ] || die "respipe binary $RESPIPE_BIN is missing or not executable"
    export RESPIPE_BIN
fi

work="$root/target/go-client"
mkdir -p "$work/gopath" "$work/cache" "$work/logs"
export RESPIPE_GO_LOGDIR="$work/logs"
export GO111MODULE=off
export GOPATH="$gocode:$work/gopath"
export GOCACHE="$work/cache"
export GOENV=off
export GOFLAGS=
export GOTOOLCHAIN=local
export GOPROXY=off

cd "$here"
go version
exec go test -count=1 -timeout 120s -v "$@" .
