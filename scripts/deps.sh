#!/bin/bash
# Installs what govmd's build, tests and benchmarks need on a Debian 12
# machine: Debian packages with apt-get, and the Go toolchain named in
# go.mod (fetched by the go command itself, GOTOOLCHAIN) when the installed one is missing or
# older. The image build (images/build.sh) installs its own packages.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
PKGS="ethtool iproute2 iputils-ping kmod procps ca-certificates qemu-system-x86 qemu-utils busybox-static cpio"

missing=()
for p in $PKGS; do
	[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null ||
		{ $SUDO apt-get update -qq; $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null; }
fi

want=$(sed -n 's/^go \([0-9.]*\)$/\1/p' go.mod)
have=$(command -v go > /dev/null && GOTOOLCHAIN=local go env GOVERSION 2> /dev/null | sed 's/^go//' || true)
newer() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -1)" = "$1" ]; }
if [ -z "$have" ] || ! newer "$have" "$want"; then
	# The go command fetches a toolchain itself (GOTOOLCHAIN, through the
	# module proxy GOPROXY names): any Go from 1.21 on switches when asked
	# for go$want. An older or missing Go first comes from Debian, and
	# fetches the same toolchain module with "go mod download".
	if [ -z "$have" ]; then
		echo "deps: apt-get install golang-go (to fetch Go $want with)"
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends golang-go > /dev/null ||
			{ $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends golang-go > /dev/null; }
		have=$(GOTOOLCHAIN=local go env GOVERSION | sed 's/^go//')
	fi
	echo "deps: installing Go $want with the go command (have: $have)"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	if newer "$have" 1.21; then
		root=$(cd "$tmp" && GOTOOLCHAIN=go$want go env GOROOT)
	else
		root=$(cd "$tmp" && GOFLAGS=-modcacherw go mod download -json "golang.org/toolchain@v0.0.1-go$want.linux-amd64" |
			sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	fi
	[ -x "$root/bin/go" ] || { echo "deps: the go command did not fetch Go $want (GOPROXY=$(go env GOPROXY))" >&2; exit 1; }
	$SUDO rm -rf /usr/local/go
	$SUDO cp -a "$root" /usr/local/go
	$SUDO chmod -R u+w,a+rX /usr/local/go
	echo "deps: $(/usr/local/go/bin/go version) in /usr/local/go (put /usr/local/go/bin first in PATH)"
fi
echo "deps: ok"
