# govmd top-level Makefile. Keep targets thin: each calls a script or go.
#
#   make setup    install build/test dependencies (Debian), build govmd and the test images
#   make test     the CI suite: gofmt, vet, every test with -race, fuzz seeds, then the KVM and e2e-subset tests
#   make e2e      the full real-guest matrix (slow under software-nested KVM)
#   make bench    benchmarks; writes docs/bench.md
#   make fuzz     run every fuzz target for FUZZTIME each

GO ?= go
FUZZTIME ?= 30s

.PHONY: setup deps build images test lint unit kvmtest e2e bench fuzz clean

setup: deps build images

deps:
	scripts/deps.sh

# A static pure-Go binary (no glibc): copied anywhere, and its sandbox
# needs no allowance for glibc's threads (internal/sandbox).
build:
	CGO_ENABLED=0 $(GO) build -o bin/govmd ./cmd/govmd

# Test guests (kernel, initramfs, Debian kernel) into images/out/; cached
# in ~/.cache/govmd (GOVMD_CACHE). See images/README.md.
images:
	images/build.sh

test: lint unit kvmtest

lint:
	scripts/lint.sh

# Unit and harness tests (real taps in test namespaces) with -race; the fuzz
# targets' seed corpora run as ordinary tests. With a usable /dev/kvm the
# KVM packages are left to kvmtest, so that each KVM test runs once.
unit:
	scripts/unit.sh

# The tests that need KVM, with GOVMD_E2E_REQUIRE=1 (no skipping): natively
# (with -race) with a usable /dev/kvm, else inside nested KVM on QEMU TCG.
kvmtest:
	scripts/kvmtests.sh

# The full real-guest matrix (every transport x offload, the Debian kernel).
e2e:
	GOVMD_E2E=full scripts/kvmtests.sh

bench:
	scripts/bench.sh

fuzz:
	scripts/fuzz.sh $(FUZZTIME)

clean:
	rm -rf bin
