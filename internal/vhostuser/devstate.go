package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/govirtiofsd/govirtiofsd/internal/vhostuser/wire"
)

// maxDeviceState bounds the state a front-end may feed us on LOAD.
const maxDeviceState = 256 << 20

// deviceStateTransfer is one SET_DEVICE_STATE_FD transfer running in the
// background until CHECK_DEVICE_STATE collects its result.
type deviceStateTransfer struct {
	f    *os.File
	done chan struct{}
	err  error // valid once done is closed
}

func (t *deviceStateTransfer) close() {
	t.f.Close() // aborts a transfer still running
	<-t.done
}

// setDeviceStateFD starts a device state transfer over the pipe the
// front-end passed. The reply says whether it started; bit 8 says we
// return no fd of our own.
func (d *device) setDeviceStateFD(m *wire.Message) error {
	const noFD = 1 << 8
	fail := func(err error) error {
		d.log.Warn("vhost-user SET_DEVICE_STATE_FD refused", "err", err)
		return d.reply(m, wire.EncodeU64(noFD|1))
	}
	if d.protocol&wire.ProtocolDeviceState == 0 || d.cfg.DeviceState == nil {
		return fail(errors.New("DEVICE_STATE not negotiated"))
	}
	dir := binary.LittleEndian.Uint32(m.Payload)
	phase := binary.LittleEndian.Uint32(m.Payload[4:])
	if phase != wire.DeviceStatePhaseStop {
		return fail(fmt.Errorf("migration phase %d not supported", phase))
	}
	if dir != wire.DeviceStateSave && dir != wire.DeviceStateLoad {
		return fail(fmt.Errorf("transfer direction %d", dir))
	}
	f, err := m.TakeFile(0, "device-state", true)
	if err != nil {
		return fail(err)
	}
	if d.devState != nil {
		d.devState.close()
	}
	t := &deviceStateTransfer{f: f, done: make(chan struct{})}
	d.devState = t
	ds := d.cfg.DeviceState
	go func() {
		defer close(t.done)
		defer f.Close()
		if dir == wire.DeviceStateSave {
			b, err := ds.SaveState()
			if err == nil {
				_, err = f.Write(b)
			}
			t.err = err
			return
		}
		b, err := io.ReadAll(io.LimitReader(f, maxDeviceState+1))
		switch {
		case err != nil:
			t.err = err
		case len(b) > maxDeviceState:
			t.err = fmt.Errorf("device state larger than %d bytes", maxDeviceState)
		default:
			t.err = ds.LoadState(b)
		}
	}()
	return d.reply(m, wire.EncodeU64(noFD))
}

// checkDeviceState waits for the transfer and reports its result.
func (d *device) checkDeviceState(m *wire.Message) error {
	t := d.devState
	var err error
	if t == nil {
		err = errors.New("no device state transfer")
	} else {
		<-t.done
		err = t.err
		d.devState = nil
	}
	if err != nil {
		d.log.Warn("vhost-user device state transfer failed", "err", err)
		return d.reply(m, wire.EncodeU64(1))
	}
	return d.reply(m, wire.EncodeU64(0))
}
