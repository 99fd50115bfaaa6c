package virtqueue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	testRegionSize = 64 << 10
	gpa0           = 0x10000 // region 0; region 1 follows directly
	gpa1           = gpa0 + testRegionSize
	uaddr0         = 0x7f0000000000
	uaddr1         = 0x7e0000000000 // not adjacent in the front-end
)

// testMem is two adjacent guest regions backed by Go memory.
type testMem struct {
	mem  *Memory
	back [2][]byte
}

func newTestMem(t testing.TB) *testMem {
	t.Helper()
	tm := &testMem{}
	var rs []*Region
	for i, l := range []RegionLayout{
		{GuestPhysAddr: gpa0, Size: testRegionSize, UserAddr: uaddr0},
		{GuestPhysAddr: gpa1, Size: testRegionSize, UserAddr: uaddr1},
	} {
		tm.back[i] = make([]byte, testRegionSize)
		r, err := NewRegion(l, tm.back[i])
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	m, err := NewMemory(rs)
	if err != nil {
		t.Fatal(err)
	}
	tm.mem = m
	return tm
}

// guest returns the host bytes at a guest address.
func (tm *testMem) guest(gpa uint64, n int) []byte {
	if gpa >= gpa1 {
		return tm.back[1][gpa-gpa1:][:n]
	}
	return tm.back[0][gpa-gpa0:][:n]
}

// put writes b at gpa, possibly across the region boundary.
func (tm *testMem) put(gpa uint64, b string) {
	for i := range len(b) {
		tm.guest(gpa+uint64(i), 1)[0] = b[i]
	}
}

// get reads n bytes at gpa, possibly across the region boundary.
func (tm *testMem) get(gpa uint64, n int) string {
	var r []byte
	for i := range n {
		r = append(r, tm.guest(gpa+uint64(i), 1)[0])
	}
	return string(r)
}

// ring layout inside region 0: desc at 0, avail at 0x2000, used at 0x3000.
func (tm *testMem) layout(size uint16) Layout {
	return Layout{Size: size, DescUser: uaddr0, AvailUser: uaddr0 + 0x2000, UsedUser: uaddr0 + 0x3000}
}

func (tm *testMem) pair(t testing.TB, size uint16, f Features) (*Driver, *Queue) {
	t.Helper()
	l := tm.layout(size)
	d, err := NewDriver(size, f.EventIdx, tm.back[0][0:0x2000], tm.back[0][0x2000:0x3000], tm.back[0][0x3000:0x5000])
	if err != nil {
		t.Fatal(err)
	}
	q, err := NewQueue(tm.mem, l, f, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	return d, q
}

func TestRoundTripAcrossRegions(t *testing.T) {
	tm := newTestMem(t)
	d, q := tm.pair(t, 16, Features{})
	copy(tm.guest(gpa0+0x8000, 5), "hello")
	tm.put(gpa1-3, "world!")    // crosses into region 1
	outAddr := uint64(gpa1 - 4) // writable buffer crossing regions
	head, err := d.Add([]Buf{{Addr: gpa0 + 0x8000, Len: 5}, {Addr: gpa1 - 3, Len: 6}, {Addr: outAddr, Len: 10, Write: true}})
	if err != nil {
		t.Fatal(err)
	}
	h, ok, err := q.Next()
	if err != nil || !ok || h != head {
		t.Fatalf("Next = %d %v %v, want %d", h, ok, err, head)
	}
	c, err := q.ReadChain(tm.mem, h)
	if err != nil {
		t.Fatal(err)
	}
	if got := bytes.Join(c.In, nil); string(got) != "helloworld!" || len(c.In) != 3 {
		t.Errorf("In = %q in %d pieces, want helloworld! in 3", got, len(c.In))
	}
	if len(c.Out) != 2 || len(c.Out[0]) != 4 || len(c.Out[1]) != 6 || c.OutLen != 10 || c.InLen != 11 {
		t.Fatalf("Out pieces %d, OutLen %d InLen %d", len(c.Out), c.OutLen, c.InLen)
	}
	copy(c.Out[0], "0123")
	copy(c.Out[1], "456789")
	q.Push(h, 10)
	if !q.NeedNotify() {
		t.Error("NeedNotify = false with interrupts enabled")
	}
	uh, n, ok, err := d.Used()
	if err != nil || !ok || uh != head || n != 10 {
		t.Fatalf("Used = %d %d %v %v", uh, n, ok, err)
	}
	if got := tm.get(outAddr, 10); got != "0123456789" {
		t.Errorf("guest sees %q", got)
	}
	if d.Free() != 16 {
		t.Errorf("driver free = %d, want 16", d.Free())
	}
}

func TestIndirect(t *testing.T) {
	for _, neg := range []bool{true, false} {
		tm := newTestMem(t)
		d, q := tm.pair(t, 8, Features{IndirectDesc: neg})
		copy(tm.guest(gpa0+0x9000, 3), "abc")
		table := tm.guest(gpa0+0x6000, 64)
		_, err := d.AddIndirect(gpa0+0x6000, table, []Buf{{Addr: gpa0 + 0x9000, Len: 3}, {Addr: gpa0 + 0xa000, Len: 8, Write: true}})
		if err != nil {
			t.Fatal(err)
		}
		h, _, _ := q.Next()
		c, err := q.ReadChain(tm.mem, h)
		if !neg {
			if !errors.Is(err, ErrBrokenRing) {
				t.Errorf("indirect without feature: err %v", err)
			}
			continue
		}
		if err != nil || string(bytes.Join(c.In, nil)) != "abc" || c.OutLen != 8 {
			t.Fatalf("ReadChain = %+v, %v", c, err)
		}
	}
}

func putDesc(table []byte, i int, addr uint64, l uint32, flags, next uint16) {
	e := table[16*i:]
	binary.LittleEndian.PutUint64(e, addr)
	binary.LittleEndian.PutUint32(e[8:], l)
	binary.LittleEndian.PutUint16(e[12:], flags)
	binary.LittleEndian.PutUint16(e[14:], next)
}

func TestMalformedChains(t *testing.T) {
	cases := []struct {
		name  string
		setup func(table []byte)
		want  error
	}{
		{"loop", func(tb []byte) {
			putDesc(tb, 0, gpa0+0x9000, 4, DescFNext, 1)
			putDesc(tb, 1, gpa0+0x9000, 4, DescFNext, 0)
		}, ErrBrokenRing},
		{"next out of range", func(tb []byte) { putDesc(tb, 0, gpa0+0x9000, 4, DescFNext, 99) }, ErrBrokenRing},
		{"unmapped", func(tb []byte) { putDesc(tb, 0, 0x1000, 4, 0, 0) }, ErrBadAddress},
		{"past the end", func(tb []byte) { putDesc(tb, 0, gpa1+testRegionSize-2, 4, 0, 0) }, ErrBadAddress},
		{"overflow", func(tb []byte) { putDesc(tb, 0, ^uint64(0)-1, 4, 0, 0) }, ErrBadAddress},
		{"read after write", func(tb []byte) {
			putDesc(tb, 0, gpa0+0x9000, 4, DescFWrite|DescFNext, 1)
			putDesc(tb, 1, gpa0+0x9000, 4, 0, 0)
		}, ErrBrokenRing},
		{"indirect with next", func(tb []byte) { putDesc(tb, 0, gpa0+0x6000, 32, DescFIndirect|DescFNext, 1) }, ErrBrokenRing},
		{"indirect bad len", func(tb []byte) { putDesc(tb, 0, gpa0+0x6000, 20, DescFIndirect, 0) }, ErrBrokenRing},
		{"indirect unmapped", func(tb []byte) { putDesc(tb, 0, 0x100, 32, DescFIndirect, 0) }, ErrBadAddress},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tm := newTestMem(t)
			_, q := tm.pair(t, 8, Features{IndirectDesc: true})
			tc.setup(tm.back[0][:0x2000])
			if _, err := q.ReadChain(tm.mem, 0); !errors.Is(err, tc.want) {
				t.Errorf("ReadChain err = %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("nested indirect", func(t *testing.T) {
		tm := newTestMem(t)
		_, q := tm.pair(t, 8, Features{IndirectDesc: true})
		putDesc(tm.back[0][:0x2000], 0, gpa0+0x6000, 16, DescFIndirect, 0)
		putDesc(tm.guest(gpa0+0x6000, 16), 0, gpa0+0x6000, 16, DescFIndirect, 0)
		if _, err := q.ReadChain(tm.mem, 0); !errors.Is(err, ErrBrokenRing) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("indirect loop", func(t *testing.T) {
		tm := newTestMem(t)
		_, q := tm.pair(t, 8, Features{IndirectDesc: true})
		putDesc(tm.back[0][:0x2000], 0, gpa0+0x6000, 32, DescFIndirect, 0)
		it := tm.guest(gpa0+0x6000, 32)
		putDesc(it, 0, gpa0+0x9000, 1, DescFNext, 1)
		putDesc(it, 1, gpa0+0x9000, 1, DescFNext, 0)
		if _, err := q.ReadChain(tm.mem, 0); !errors.Is(err, ErrBrokenRing) {
			t.Errorf("err = %v", err)
		}
	})
}

func TestAvailIndexRunsAhead(t *testing.T) {
	tm := newTestMem(t)
	_, q := tm.pair(t, 8, Features{})
	binary.LittleEndian.PutUint16(tm.back[0][0x2002:], 9)
	if _, _, err := q.Next(); !errors.Is(err, ErrBrokenRing) {
		t.Errorf("err = %v", err)
	}
	binary.LittleEndian.PutUint16(tm.back[0][0x2002:], 1)
	binary.LittleEndian.PutUint16(tm.back[0][0x2004:], 8) // head out of range
	q2, _ := NewQueue(tm.mem, tm.layout(8), Features{}, 0)
	defer q2.Close()
	if _, _, err := q2.Next(); !errors.Is(err, ErrBrokenRing) {
		t.Errorf("err = %v", err)
	}
}

func TestNotificationSuppression(t *testing.T) {
	t.Run("flags", func(t *testing.T) {
		tm := newTestMem(t)
		d, q := tm.pair(t, 8, Features{})
		q.DisableNotification()
		d.Add([]Buf{{Addr: gpa0 + 0x9000, Len: 1}})
		if d.NeedKick() {
			t.Error("driver kicks although device disabled notifications")
		}
		if !q.EnableNotification() {
			t.Error("EnableNotification missed a pending entry")
		}
		d.Add([]Buf{{Addr: gpa0 + 0x9000, Len: 1}})
		if !d.NeedKick() {
			t.Error("driver does not kick with notifications enabled")
		}
		binary.LittleEndian.PutUint16(tm.back[0][0x2000:], AvailFNoInterrupt)
		h, _, _ := q.Next()
		q.Push(h, 0)
		if q.NeedNotify() {
			t.Error("NeedNotify with VIRTQ_AVAIL_F_NO_INTERRUPT")
		}
	})
	t.Run("event idx", func(t *testing.T) {
		tm := newTestMem(t)
		d, q := tm.pair(t, 8, Features{EventIdx: true})
		for i := 0; i < 3; i++ {
			d.Add([]Buf{{Addr: gpa0 + 0x9000, Len: 1}})
		}
		if !d.NeedKick() { // avail_event 0, first entry crosses it
			t.Error("no kick for the first entries")
		}
		for i := 0; i < 3; i++ {
			h, ok, err := q.Next()
			if !ok || err != nil {
				t.Fatal(ok, err)
			}
			q.Push(h, 0)
			if got := q.NeedNotify(); got != (i == 0) {
				t.Errorf("push %d: NeedNotify = %v (used_event 0)", i, got)
			}
		}
		if q.EnableNotification() {
			t.Error("EnableNotification reports entries on an empty ring")
		}
		d.Add([]Buf{{Addr: gpa0 + 0x9000, Len: 1}})
		if !d.NeedKick() {
			t.Error("no kick after device re-armed avail_event")
		}
		for {
			_, _, ok, _ := d.Used()
			if !ok {
				break
			}
		}
		d.EnableInterrupts() // used_event = 3
		h, _, _ := q.Next()
		q.Push(h, 0)
		if !q.NeedNotify() {
			t.Error("no interrupt when crossing used_event")
		}
	})
}

func TestLayoutValidation(t *testing.T) {
	tm := newTestMem(t)
	for _, l := range []Layout{
		{Size: 0}, {Size: 3}, {Size: 65535},
		{Size: 8, DescUser: uaddr0 + 8, AvailUser: uaddr0 + 0x2000, UsedUser: uaddr0 + 0x3000},
		{Size: 8, DescUser: uaddr0, AvailUser: uaddr0 + 0x2001, UsedUser: uaddr0 + 0x3000},
		{Size: 8, DescUser: uaddr0, AvailUser: uaddr0 + 0x2000, UsedUser: uaddr0 + 0x3002},
		{Size: 8, DescUser: uaddr0, AvailUser: uaddr0 + 0x2000, UsedUser: uaddr0 + testRegionSize - 16},
		{Size: 8, DescUser: 0x1000, AvailUser: uaddr0 + 0x2000, UsedUser: uaddr0 + 0x3000},
	} {
		if q, err := NewQueue(tm.mem, l, Features{}, 0); err == nil {
			q.Close()
			t.Errorf("NewQueue(%+v) accepted", l)
		}
	}
}

func TestMemoryTable(t *testing.T) {
	a, _ := NewRegion(RegionLayout{GuestPhysAddr: 0, Size: 0x2000}, make([]byte, 0x2000))
	b, _ := NewRegion(RegionLayout{GuestPhysAddr: 0x1000, Size: 0x2000}, make([]byte, 0x2000))
	if _, err := NewMemory([]*Region{a, b}); err == nil {
		t.Error("overlapping regions accepted")
	}
	for _, l := range []RegionLayout{
		{Size: 0},
		{GuestPhysAddr: ^uint64(0), Size: 2},
		{UserAddr: ^uint64(0) - 10, Size: 12},
	} {
		if err := l.Validate(); err == nil {
			t.Errorf("%v accepted", l)
		}
	}
	if err := (RegionLayout{GuestPhysAddr: ^uint64(0) - 0xfff, Size: 0x1000}).Validate(); err != nil {
		t.Errorf("region ending at 2^64 refused: %v", err)
	}
}

func TestMappedRegionLifetime(t *testing.T) {
	fd, err := unix.MemfdCreate("vq-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal("memfd:", err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	if err := f.Truncate(4 * 4096); err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("xyz"), 4096+100)
	r, err := MapRegion(f, RegionLayout{GuestPhysAddr: 0x100000, Size: 8192, UserAddr: 0x5000, MmapOffset: 4096 + 96})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMemory([]*Region{r})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Slice(0x100004, 3)
	if err != nil || string(b) != "xyz" {
		t.Fatalf("Slice = %q %v", b, err)
	}
	if _, err := m.Slice(0x100000+8190, 4); !errors.Is(err, ErrBadAddress) {
		t.Errorf("slice past the end: %v", err)
	}
	m2, found := m.Without(r.Layout())
	if !found || m2.Len() != 0 {
		t.Fatalf("Without: %v %d", found, m2.Len())
	}
	held := m.Acquire() // an in-flight request
	m.Release()
	m2.Release()
	if string(b) != "xyz" { // still mapped: held
		t.Error("mapping changed")
	}
	held.Release() // unmaps and closes the memfd
	if err := unix.Fstat(fd, &unix.Stat_t{}); err == nil {
		t.Error("memfd still open after the last release")
	}
}

// FuzzReadChain feeds arbitrary descriptor tables, indirect tables and
// avail rings to the walker and checks that every buffer it returns lies
// inside guest memory.
func FuzzReadChain(f *testing.F) {
	seed := make([]byte, 16*8+64)
	putDesc(seed, 0, gpa0+0x9000, 16, DescFNext, 1)
	putDesc(seed, 1, gpa1-8, 16, DescFWrite, 0)
	f.Add(seed, uint16(0), uint16(1))
	s2 := make([]byte, 16*8+64)
	putDesc(s2, 2, gpa0+0x6000, 32, DescFIndirect, 0)
	putDesc(s2[128:], 0, gpa0+0x9000, 4, DescFNext, 1)
	putDesc(s2[128:], 1, gpa0+0x9000, 4, DescFWrite, 0)
	f.Add(s2, uint16(2), uint16(1))
	s3 := make([]byte, 16*8)
	putDesc(s3, 0, gpa0, 1, DescFNext, 0)
	f.Add(s3, uint16(0), uint16(1))
	f.Add([]byte{}, uint16(7), uint16(0xffff))
	f.Fuzz(func(t *testing.T, tables []byte, head uint16, availIdx uint16) {
		tm := newTestMem(t)
		_, q := tm.pair(t, 8, Features{IndirectDesc: true, EventIdx: true})
		copy(tm.back[0][:128], tables)
		if len(tables) > 128 {
			copy(tm.guest(gpa0+0x6000, 0x1000), tables[128:]) // indirect table area
		}
		binary.LittleEndian.PutUint16(tm.back[0][0x2002:], availIdx)
		binary.LittleEndian.PutUint16(tm.back[0][0x2004:], head)
		h, ok, err := q.Next()
		if err != nil || !ok {
			return
		}
		c, err := q.ReadChain(tm.mem, h)
		if err != nil {
			return
		}
		lo0, lo1 := uintptr(unsafe.Pointer(&tm.back[0][0])), uintptr(unsafe.Pointer(&tm.back[1][0]))
		for _, iov := range append(append([][]byte(nil), c.In...), c.Out...) {
			if len(iov) == 0 {
				continue
			}
			p := uintptr(unsafe.Pointer(&iov[0]))
			in0 := p >= lo0 && p+uintptr(len(iov)) <= lo0+testRegionSize
			in1 := p >= lo1 && p+uintptr(len(iov)) <= lo1+testRegionSize
			if !in0 && !in1 {
				t.Fatalf("iov %#x+%d outside guest memory", p, len(iov))
			}
		}
		q.Push(h, c.OutLen)
	})
}

func TestMapRegionPastEOF(t *testing.T) {
	fd, err := unix.MemfdCreate("vq-short", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal("memfd:", err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	f.Truncate(4096)
	if r, err := MapRegion(f, RegionLayout{Size: 8192}); err == nil {
		r.Release()
		t.Error("region larger than its file mapped")
	}
}
