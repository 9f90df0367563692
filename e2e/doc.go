// Package e2e holds end-to-end tests: they build the govmd binary, boot the
// test guests from images/out (built by `make images`) and check what the
// guest printed on its serial console.
//
// Guest boots are slow on software-nested KVM (a minute or more each), so
// the tests batch several checks into one boot through the guest agent's
// govmd.test= step list. `make test` runs the CI subset; `make e2e` sets
// GOVMD_E2E=full and runs the whole matrix.
//
// GOVMD_BIN names a prebuilt govmd binary and GOVMD_IMAGES the images/out
// directory, for runs where the source tree is not at hand (the nested-KVM
// VM of scripts/nested.sh). GOVMD_E2E_REQUIRE=1 turns a missing /dev/kvm or
// image into a failure instead of a skip.
package e2e
