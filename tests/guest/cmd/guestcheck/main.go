// Command guestcheck runs the tests/guest checks inside a QEMU guest. It is
// built statically (CGO_ENABLED=0) into the initramfs and started by its init
// script; every outcome is printed on stdout (the serial console) as a
// "RESULT <check> PASS|FAIL|SKIP <detail>" line.
//
// Usage:
//
//	guestcheck posixtest DIR               every go-fuse posixtest case, each in DIR/<case>
//	guestcheck identity DIR                see checks.Identity
//	guestcheck handles DIR                 see checks.Handles (drops the guest's caches)
//	guestcheck walk DIR N                  see checks.Walk
//	guestcheck token-write CHECK PATH TOK  see checks.WriteToken
//	guestcheck token-check CHECK PATH TOK  see checks.CheckToken
package main

import (
	"fmt"
	"os"
	"strconv"

	"github.com/govirtiofsd/govirtiofsd/tests/guest/checks"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	args := os.Args[2:]
	var rs []checks.Result
	switch os.Args[1] {
	case "posixtest":
		need(args, 1)
		runPosixtest(args[0]) // prints as it goes
		return
	case "posixtest-case":
		need(args, 2)
		runPosixtestCase(args[0], args[1]) // does not return
	case "identity":
		need(args, 1)
		rs = checks.Identity(args[0])
	case "handles":
		need(args, 1)
		rs = checks.Handles(args[0], checks.DropCaches)
	case "walk":
		need(args, 2)
		n, err := strconv.Atoi(args[1])
		if err != nil {
			usage()
		}
		rs = []checks.Result{checks.Walk(args[0], n)}
	case "token-write":
		need(args, 3)
		rs = []checks.Result{checks.WriteToken(args[0], args[1], args[2])}
	case "token-check":
		need(args, 3)
		rs = []checks.Result{checks.CheckToken(args[0], args[1], args[2])}
	default:
		usage()
	}
	for _, r := range rs {
		fmt.Println(r)
	}
}

func need(args []string, n int) {
	if len(args) != n {
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: guestcheck posixtest|identity|handles|walk|token-write|token-check ARGS...")
	os.Exit(2)
}
