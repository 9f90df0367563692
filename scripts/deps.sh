#!/bin/bash
# Installs what govmd's build, tests and benchmarks need on a Debian 12
# machine: Debian packages with apt-get, and the Go toolchain named in
# go.mod (from the Go module proxy) when the installed one is missing or
# older. The image build (images/build.sh) installs its own packages.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
PKGS="ethtool iproute2 iputils-ping kmod procps curl unzip ca-certificates qemu-system-x86 qemu-utils busybox-static cpio"

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
have=$(command -v go > /dev/null && go env GOVERSION 2> /dev/null | sed 's/^go//' || true)
newer() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -1)" = "$1" ]; }
if [ -z "$have" ] || ! newer "$have" "$want"; then
	echo "deps: installing Go $want from the Go module proxy (have: ${have:-none})"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	curl -fsSL -o "$tmp/go.zip" "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go$want.linux-amd64.zip"
	unzip -q "$tmp/go.zip" -d "$tmp"
	src=$(ls -d "$tmp"/golang.org/toolchain@*)
	$SUDO rm -rf /usr/local/go
	$SUDO mv "$src" /usr/local/go
	$SUDO chmod -R a+rX /usr/local/go
	$SUDO chmod +x /usr/local/go/bin/* /usr/local/go/pkg/tool/*/*
	echo "deps: $(/usr/local/go/bin/go version) in /usr/local/go (put /usr/local/go/bin first in PATH)"
fi
echo "deps: ok"
