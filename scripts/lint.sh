#!/bin/bash
# gofmt and go vet over the whole module; fails with the list of problems.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then
	echo "gofmt: these files need formatting:" >&2
	echo "$bad" >&2
	exit 1
fi
go vet ./...
# unsafe only in *_unsafe.go files.
if grep -l '"unsafe"' $(git ls-files '*.go' | grep -v '_unsafe\(_test\)\?\.go$') 2>/dev/null; then
	echo "lint: package unsafe imported outside *_unsafe.go files (above)" >&2
	exit 1
fi
echo "lint: ok"
