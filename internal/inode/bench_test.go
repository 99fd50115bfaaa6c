package inode

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/internal/nodestore"
	"golang.org/x/sys/unix"
)

// BenchmarkLookupNew is the daemon's share of a LOOKUP of a file it has
// never seen (statx + record), with the node table in memory and on disk;
// the two must stay within 10% of each other.
func BenchmarkLookupNew(b *testing.B) {
	for _, kind := range []string{"memory", "disk"} {
		b.Run(kind, func(b *testing.B) {
			dir := b.TempDir()
			for i := range b.N {
				os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644)
			}
			store := nodestore.OpenMemory()
			if kind == "disk" {
				var err error
				if store, err = nodestore.Open(filepath.Join(os.Getenv("BENCH_STATE_DIR"), b.TempDir()), nodestore.Options{}); err != nil {
					b.Fatal(err)
				}
			}
			tab, err := New(dir, store, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer tab.Close()
			root := tab.Root()
			defer root.Release()
			var st unix.Statx_t
			b.ResetTimer()
			for i := range b.N {
				if _, err := tab.LookupStat(root, fmt.Sprint(i), &st); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
