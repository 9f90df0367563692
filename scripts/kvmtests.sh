#!/bin/bash
# Runs the tests that need KVM (./kvm, ./vmm, ./e2e) with GOVMD_E2E_REQUIRE=1,
# so that a missing /dev/kvm or test image is a failure, not a skip:
# natively when /dev/kvm is usable, otherwise inside the nested-KVM VM of
# scripts/nested.sh. GOVMD_E2E=full selects the full e2e matrix.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -r /dev/kvm ] && [ -w /dev/kvm ] && python3 -c 'import os; os.close(os.open("/dev/kvm", os.O_RDWR))' 2> /dev/null; then
	echo "kvmtests: /dev/kvm is usable; running natively"
	GOVMD_E2E_REQUIRE=1 go test -count=1 -timeout 90m -v ./kvm ./vmm ./e2e
else
	echo "kvmtests: no usable /dev/kvm; running inside nested KVM on QEMU TCG (scripts/nested.sh)"
	scripts/nested.sh ./kvm ./vmm ./e2e
fi
