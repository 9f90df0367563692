#!/bin/bash
# Runs the tests that need KVM (./kvm, ./vmm, ./e2e) with GOVMD_E2E_REQUIRE=1,
# so that a missing /dev/kvm or test image is a failure, not a skip:
# natively with -race when /dev/kvm is usable (make unit then leaves these
# packages out), otherwise inside the nested-KVM VM of scripts/nested.sh.
# GOVMD_E2E=full selects the full e2e matrix; KVMTESTS_NESTED=1 takes the
# nested path even with a usable /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KVMTESTS_NESTED:-}" ] && scripts/kvm-usable; then
	echo "kvmtests: /dev/kvm is usable; running natively"
	GOVMD_E2E_REQUIRE=1 go test -race -count=1 -timeout 90m -v ./kvm ./vmm ./e2e
else
	echo "kvmtests: no usable /dev/kvm; running inside nested KVM on QEMU TCG (scripts/nested.sh)"
	scripts/nested.sh ./kvm ./vmm ./e2e
fi
