#!/bin/bash
# make unit: every package's tests with -race (unit tests, fuzz seed
# corpora, the virtio-net harness over real taps), except that with a
# usable /dev/kvm the packages whose tests need KVM (./kvm, ./vmm, ./e2e)
# are left to make kvmtest, which runs them there with -race: each KVM test
# runs once. Without /dev/kvm their KVM tests skip here and make kvmtest
# runs them in nested KVM.
set -euo pipefail
cd "$(dirname "$0")/.."
kvmpkgs='^github.com/govmd/govmd/(kvm|vmm|e2e)$'
if scripts/kvm-usable; then
	echo "unit: /dev/kvm is usable; ./kvm ./vmm ./e2e run in make kvmtest"
	pkgs=$(go list ./... | grep -Ev "$kvmpkgs")
else
	pkgs=$(go list ./...)
fi
exec go test -race -count=1 -timeout 60m $pkgs
