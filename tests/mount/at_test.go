package mount

import (
	"flag"
	"strings"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/tests/mount/suite"
)

var (
	atMount  = flag.String("suite.mount", "", "run the conformance suite on this already mounted directory (e.g. inside a guest)")
	atShared = flag.String("suite.shared", "", "host path of the directory -suite.mount serves, when visible")
	atXattr  = flag.Bool("suite.xattr", false, "the server under -suite.mount was started with --xattr")
	atCases  = flag.String("suite.cases", "", "comma-separated case names (default: all)")
)

// TestSuiteAt runs the conformance suite on a mount made elsewhere, such as
// a virtiofs mount inside a guest: build the test binary with
// `CGO_ENABLED=0 go test -c ./tests/mount` and run it as
// `mount.test -test.run '^TestSuiteAt$' -suite.mount /mnt [-suite.xattr]`.
// Without -suite.mount it has nothing to do.
func TestSuiteAt(t *testing.T) {
	if *atMount == "" {
		return
	}
	opts := suite.Options{Xattr: *atXattr}
	if *atCases != "" {
		opts.Cases = strings.Split(*atCases, ",")
	}
	suite.Run(t, *atMount, *atShared, opts)
}
