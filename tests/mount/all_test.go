//go:build pending

package mount

// With -tags pending every case runs against govirtiofsd.
const runAll = true

var (
	enabledSuite = map[string]bool{}
	enabledPosix = map[string]bool{}
	enabledTests = map[string]bool{}
)
