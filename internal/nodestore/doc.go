// Package nodestore is the node identity table: it maps FUSE nodeids to
// host files (mount, st_ino, file type, file handle, parent and name) and
// back, keeps that map in a state directory so nodeids survive daemon
// restarts, bounds its memory by a setting rather than by the number of
// files, and seals every record with a MAC.
//
// Two implementations share the Store interface and its semantics (the
// tests run against both): OpenMemory for --state-dir=none, and Open for a
// state directory.
//
// # Semantics
//
// Nodeids are allocated from a counter, 1 (the root) first, and never
// reused. Generation is a random nonzero 64-bit epoch drawn when the store
// is created and persisted with it; it is the FUSE generation of every
// nodeid, so a daemon that lost its state (new store, new epoch) can never
// alias an old (nodeid, generation) pair to another file. LookupOrInsert
// makes "look up, insert if absent" atomic so parallel LOOKUPs of one
// file agree on one nodeid.
//
// # Which record ByIno answers
//
// Several records can have the same (mount, ino). Nodeids are never
// reused, and a record outlives its host file until the daemon deletes it
// (on unlink, or when a LOOKUP finds another file type or file handle
// under the inode number); a file deleted behind the daemon's back, whose
// inode number the host gives to a new file, leaves its record behind,
// and the kernel may still hold its nodeid (to answer it with ESTALE).
// The new file must not get that nodeid. So each (mount, ino) has at most
// one owner, the record ByIno and LookupOrInsert answer:
//
//   - Insert, LookupOrInsert when it inserts, and an Update that moves a
//     record to another (mount, ino) make the record the owner of its
//     (mount, ino), taking it from the previous owner: the host reused
//     the inode number, and the newest file is the one that has it now.
//   - An Update that keeps the (mount, ino) (a rename, another hard link)
//     never changes the owner: an older record whose key a newer one took
//     (a stale nodeid) does not take it back.
//   - Delete of the owner, or an Update that moves it elsewhere, leaves
//     the key without owner (ByIno: ErrNotFound; the next LOOKUP inserts
//     a new record), even if older records with the key remain: they lost
//     it because their file was gone. They still resolve by nodeid.
//
// The rule holds alike in the memory store and the persistent store,
// whatever its cache size, with or without Options.WriteBehindRecords,
// and across a process crash and the next Open's recovery (TestKeyOwner,
// TestKeyOwnerCrash, and FuzzWriteBehind, which checks the persistent
// stores against the memory store). Where the store cannot know which
// records had lost their key, the newest surviving record of each
// (mount, ino) owns it: when the reverse index is rebuilt from the
// records (a host crash while open, a missing index file), and in the
// store Import builds. A record that fails its MAC owns nothing; an
// Update that rewrites one makes it the owner of its new key.
//
// # On-disk layout (Open)
//
//	key          32 random bytes, mode 0600 (unless Options.Key is given;
//	             a key file of 16 B–1 KiB put there is accepted too)
//	meta         header, two copies 4 KiB apart (see header); flock'ed while open
//	records      fixed 256-byte slots, slot i = nodeid i: Get is one pread
//	records.ext  384-byte overflow slots for name+handle > 200 bytes (rare)
//	index.N      reverse index, an open-addressing hash table (see index, grow.go)
//	mounts       the mount table, rewritten whole and atomically on change
//
// The files are read and written with pread/pwrite, not through a mapping
// of the whole file: pages in the page cache do not count towards the
// process's RSS, while touched pages of a mapping do. The one exception,
// with Options.WriteBehindRecords, is Flush's window over the newest 256 KiB
// of the records file (writebehind.go), so at most 256 KiB of mapped pages.
// Process memory is the cache (Options.CacheBytes,
// fixed arrays allocated at Open, see cache), a one-byte-per-bucket
// mirror of the index (index.fp: up to a quarter of CacheBytes, at most
// 4 MiB; bigger indexes are not mirrored) plus small per-call buffers.
// Measured with 1M records (24-byte handles, ~25-byte names) and the
// default 8 MiB cache: RSS +21.5 MiB over the empty store (HeapInuse
// 17.8 MiB, of which 2 MiB mirror; +17.5 MiB without it), on disk 280 MiB
// (244 MiB of slots, preallocated up to 4 MiB ahead; the index at 2^21
// entries × 16 bytes = 32 MiB).
//
// # Sealing
//
// The records, the header and the mount table are each sealed with
// HMAC-SHA256 truncated to 16 bytes, under keys derived from the master
// key by purpose (HMAC(master, "govirtiofsd/nodestore/v1/<purpose>")).
// A record's MAC covers the store's generation, its nodeid and every field
// (unused bytes of the slot must be zero), so a record cannot be altered,
// moved to another nodeid's slot, or copied from another store — even one
// sharing the key. Such a record reads as ErrTampered, with an slog error
// naming the nodeid, file and offset (once per nodeid, so a guest
// repeating the lookup cannot flood the log); no field of it is returned,
// and other records are unaffected. Verify checks every record (an
// operator's fsck). The reverse index is not sealed: it is a
// hint, and every hit is checked against the (sealed) record it names, so
// corrupting it costs a miss, never a wrong answer.
//
// Why HMAC-SHA256: it is in the standard library, has no nonce to manage
// (records are rewritten in place by Update, so a nonce-based MAC like
// GMAC would need a per-slot counter and fails badly on reuse), needs no
// hand-written construction (AES-CMAC is not in the standard library),
// and with SHA-NI it costs 280–400 ns per record (BenchmarkMAC: fixed
// fields + a 25-byte name + 24-byte handle, 3 SHA-256 blocks with the
// pooled HMAC state, 0 allocations) — about 1% of a 20–50 µs FUSE LOOKUP,
// paid only on cache misses and writes. Only the used bytes are hashed;
// unused ones must be zero. 16 bytes keep forgery at 2^-128 per try.
//
// # Durability
//
// Process crash (SIGKILL, panic): every record an Insert, Update or Delete
// wrote is in the page cache when it returns, so the next process sees it.
// The reverse index entry of a new record may be written behind (up to
// 4096 of them, written a page at a time; see deferIndexLocked): the next
// Open after an unclean stop puts back the entries of the records from the
// header's "indexed" mark on, in nodeid order (TestCrashWriteBehind; an
// Insert that takes a key from a record past the mark moves the mark, so
// that this cannot give a key back to a record that had lost it, see
// recoverIndexLocked). A Delete's tombstone may be written behind too:
// if it is lost, the entry names a zeroed record, a dead entry that
// lookups pass over; it is written at once where the file may still have,
// in its bucket, the entry of an older record that lost the key to the
// deleted one (deferTombLocked, TestKeyOwnerCrashDeleteBehind)
// (TestCrashSIGKILL kills a child inserting in a loop and checks that every
// acknowledged nodeid resolves, by nodeid and by ino, and that no nodeid
// is handed out twice, across two kill/reopen rounds). Nodeids are
// reserved 65536 at a time in the header, written and fdatasync'ed before
// any of them is used, so neither a process crash nor a power loss can
// reuse one; a restart skips the rest of the batch.
//
// With Options.WriteBehindRecords, the records of Insert, LookupOrInsert
// and Update (one that keeps the record's key), and the zeroed slot of a
// Delete (unless its tombstone is written at once), are NOT written when
// the call returns: they wait, sealed, in a buffer of at most 256 slots, and
// survive a process crash only once Flush (or Sync, Close, an index flush
// or a full buffer) has written them, each run of consecutive nodeids with
// one copy into the window over the newest slots or one pwrite
// (writebehind.go). The caller calls Flush before the nodeids
// leave the process (the daemon: after each request, before its reply); a
// record lost unflushed reads as ErrNotFound in the next process, as one
// lost in a host crash (TestWriteBehindFlushCrash,
// TestCrashSIGKILLWriteBehind). Flush writes every pending record, not only
// the caller's, so a request that found a record another request has just
// inserted is covered by its own Flush. Meanwhile the store serves pending
// records from the buffer. Index entries written to the file directly
// (during an index migration, or for an index too big to mirror) may name
// a record that is then lost: a lookup checks every entry against its
// record, so that costs a dead entry until the next rebuild, never a wrong
// answer.
//
// Host crash / power loss: the header's nodeid reservation and generation,
// the key, the mount table and the root record (nodeid 1) are fsync'ed
// when written. Header writes that only name index files (a grow starting
// or ending) are not: they go to the copy not last synced, so a host crash
// falls back to that one, and the index is rebuilt then anyway.
// Records written since the last Sync (or Close) may be lost — they read
// as ErrNotFound, which the filesystem turns into ESTALE — or torn, which
// the MAC turns into ErrTampered; never a misread record. The header says
// whether the store was open and under which boot
// (/proc/sys/kernel/random/boot_id); opening a store that was open when
// the host went down rebuilds the reverse index from the records, so it
// cannot name lost records or miss surviving ones. A stale header copy
// (torn write) falls back to the other copy.
//
// Full disk: the records file is preallocated 256 KiB at a time (with
// fallocate where the filesystem has it, see allocLocked) and index files
// whole, by writing zeros (not fallocate: see zeroFill), so ENOSPC
// surfaces before an Insert writes anything: the Insert fails with a
// wrapped ENOSPC and the store stays consistent and usable (reads,
// updates, Close, reopen, and inserts again once space is freed).
//
// # Migration to another host
//
// Export writes the whole table (generation, nodeid counter, mounts,
// records) as one stream sealed with a caller-given key; Import rebuilds a
// memory or persistent store from it, committing nothing unless the MAC
// verifies. For a state directory on shared storage neither is needed:
// the destination opens the directory once the source has closed it.
//
// # Concurrency and lock order
//
// All methods are safe for concurrent use.
//
//	diskStore.mu (RWMutex)  →  cache shard mu (Mutex)
//	diskStore.mu (RWMutex)  →  diskStore.reportMu (Mutex)
//	diskStore.mu (RWMutex)  →  writeBehind.mu (Mutex)
//
// diskStore.mu is held shared by Get (on a cache miss), ByIno, Mounts and
// Export, and by Sync only to duplicate the descriptors it then syncs
// without the lock, and exclusively by Insert, LookupOrInsert, Update,
// Delete, PutMount and Close; it guards the file offsets, the nodeid counter, the header,
// the index and a running index migration. Cache shard locks and reportMu
// are leaves, taken with or without diskStore.mu. A Get that hits the
// cache takes only a shard lock. writeBehind.mu (Options.WriteBehindRecords)
// is a leaf too: Flush takes it alone, after an atomic check that anything
// is pending. memStore has a single RWMutex.
//
// # Costs (1M records, 2 cores shared with other work, page cache warm)
//
//	Get, cache hit                            ~60 ns, 0 allocs
//	Get, miss: pread + MAC                    ~1.4–1.5 µs, 1 alloc (name+handle)
//	ByIno, hit: index pread + record pread    ~2.2 µs
//	ByIno, miss: the mirror, no read          (an index pread 1 time in ~250)
//	Insert, new key: 1 pwrite + MAC           (the slot; the index entry
//	                                          is written behind, ~0.1-0.3
//	                                          pwrite+pread each)
//	Delete: 1 pwrite                          (the slot; the tombstone, found
//	                                          where the cache's hint says,
//	                                          else by a probe, is written
//	                                          behind like an insert's entry;
//	                                          with WriteBehindRecords the
//	                                          slot's zeros wait for Flush)
//
// With Options.WriteBehindRecords, a request that records 1000 new nodes
// and then Flushes (BenchmarkReaddirplusNew, ext4) costs 0.15 pwrites per
// node instead of 1.14 (4 of them for the records, the rest index pages),
// ~1.35 instead of ~1.87 µs of CPU per node.
//
// A CREATE+UNLINK pair (BenchmarkChurn; BenchmarkChurnFlush with
// write-behind and a Flush after each) costs 2 pwrites (the slot, its
// zeros) instead of 3 since Delete's tombstone is written behind: ~1.75
// to ~1.9 µs of CPU instead of ~2.0 to ~2.2 on ext4.
//
// (BenchmarkLookupOrInsertNew, BenchmarkChurn and the Small benchmarks
// measure these against --state-dir=none on a fresh store.)
//
// The index doubles when 70% full; the new table is zero-filled a little
// per write from 50% load on, and the entries move to it incrementally, at
// least 256 per write (grow.go), instead of in one ~100–200 ms pause at 1M
// records. Open of a 1M-record store takes ~130 ms (it counts the index);
// rebuilding the index from the records (after a host crash) ~2 s.
package nodestore
