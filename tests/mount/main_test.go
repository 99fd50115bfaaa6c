// Package mount tests govirtiofsd through real /dev/fuse mounts, as root:
// the conformance suite in ./suite, go-fuse's posixtest, and the node
// identity promises of issue 3. Set GOVIRTIOFSD_TEST_DAEMON=loopback to run
// the same tests against go-fuse's example loopback.
//
// What runs against govirtiofsd in a plain `go test` is listed in
// enabled_test.go; `go test -tags pending` runs everything, including the
// tests in *_pending_test.go files.
package mount

import (
	"testing"

	"github.com/govirtiofsd/govirtiofsd/tests/mount/mounttest"
	"github.com/govirtiofsd/govirtiofsd/tests/mount/suite"
)

func TestMain(m *testing.M) {
	mounttest.Main(m, suite.HelperMain)
}
