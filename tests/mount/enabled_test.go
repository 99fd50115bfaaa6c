//go:build !pending

package mount

// The lists below say what runs against govirtiofsd in a plain `go test`
// (and so in CI). Add a name once the daemon passes it; `go test -tags
// pending` runs everything regardless. Against the loopback
// (GOVIRTIOFSD_TEST_DAEMON=loopback) everything runs except loopbackCannot.
const runAll = false

// enabledSuite lists suite cases (suite.Names()) enabled against govirtiofsd.
var enabledSuite = map[string]bool{}

// enabledPosix lists posixtest cases enabled against govirtiofsd.
var enabledPosix = map[string]bool{}

// enabledTests lists top-level tests of this package enabled against
// govirtiofsd.
var enabledTests = map[string]bool{}
