package wire

import (
	"encoding/binary"
	"fmt"

	"github.com/govirtiofsd/govirtiofsd/internal/virtqueue"
)

// Request is a vhost-user message type (front-end to back-end).
type Request uint32

// Requests, from QEMU's docs/interop/vhost-user.rst.
const (
	ReqGetFeatures         Request = 1
	ReqSetFeatures         Request = 2
	ReqSetOwner            Request = 3
	ReqResetOwner          Request = 4
	ReqSetMemTable         Request = 5
	ReqSetLogBase          Request = 6
	ReqSetLogFD            Request = 7
	ReqSetVringNum         Request = 8
	ReqSetVringAddr        Request = 9
	ReqSetVringBase        Request = 10
	ReqGetVringBase        Request = 11
	ReqSetVringKick        Request = 12
	ReqSetVringCall        Request = 13
	ReqSetVringErr         Request = 14
	ReqGetProtocolFeatures Request = 15
	ReqSetProtocolFeatures Request = 16
	ReqGetQueueNum         Request = 17
	ReqSetVringEnable      Request = 18
	ReqSendRARP            Request = 19
	ReqNetSetMTU           Request = 20
	ReqSetBackendReqFD     Request = 21
	ReqIOTLBMsg            Request = 22
	ReqSetVringEndian      Request = 23
	ReqGetConfig           Request = 24
	ReqSetConfig           Request = 25
	ReqGetInflightFD       Request = 31
	ReqSetInflightFD       Request = 32
	ReqResetDevice         Request = 34
	ReqVringKick           Request = 35
	ReqGetMaxMemSlots      Request = 36
	ReqAddMemReg           Request = 37
	ReqRemMemReg           Request = 38
	ReqSetStatus           Request = 39
	ReqGetStatus           Request = 40
	ReqGetSharedObject     Request = 41
	ReqSetDeviceStateFD    Request = 42
	ReqCheckDeviceState    Request = 43
)

var requestNames = [...]string{
	1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 4: "RESET_OWNER",
	5: "SET_MEM_TABLE", 6: "SET_LOG_BASE", 7: "SET_LOG_FD", 8: "SET_VRING_NUM",
	9: "SET_VRING_ADDR", 10: "SET_VRING_BASE", 11: "GET_VRING_BASE",
	12: "SET_VRING_KICK", 13: "SET_VRING_CALL", 14: "SET_VRING_ERR",
	15: "GET_PROTOCOL_FEATURES", 16: "SET_PROTOCOL_FEATURES",
	17: "GET_QUEUE_NUM", 18: "SET_VRING_ENABLE", 19: "SEND_RARP",
	20: "NET_SET_MTU", 21: "SET_BACKEND_REQ_FD", 22: "IOTLB_MSG",
	23: "SET_VRING_ENDIAN", 24: "GET_CONFIG", 25: "SET_CONFIG",
	26: "CREATE_CRYPTO_SESSION", 27: "CLOSE_CRYPTO_SESSION",
	28: "POSTCOPY_ADVISE", 29: "POSTCOPY_LISTEN", 30: "POSTCOPY_END",
	31: "GET_INFLIGHT_FD", 32: "SET_INFLIGHT_FD", 33: "GPU_SET_SOCKET",
	34: "RESET_DEVICE", 35: "VRING_KICK", 36: "GET_MAX_MEM_SLOTS",
	37: "ADD_MEM_REG", 38: "REM_MEM_REG", 39: "SET_STATUS", 40: "GET_STATUS",
	41: "GET_SHARED_OBJECT", 42: "SET_DEVICE_STATE_FD", 43: "CHECK_DEVICE_STATE",
}

func (r Request) String() string {
	if int(r) < len(requestNames) && requestNames[r] != "" {
		return requestNames[r]
	}
	return fmt.Sprintf("REQUEST_%d", uint32(r))
}

// Header flags.
const (
	FlagVersion   = 0x1 // protocol version 1, in bits 0-1
	FlagReply     = 0x4
	FlagNeedReply = 0x8
	versionMask   = 0x3
)

// HeaderSize is the size of the message header (request, flags, size).
const HeaderSize = 12

// MaxPayload bounds the payload the codec accepts; the largest message
// in use (SET_CONFIG with a full config space) is far below it.
const MaxPayload = 4096

// MaxFDs bounds the fds one message may carry (SET_MEM_TABLE: 8 regions).
const MaxFDs = 8

// Virtio feature bits (GET_FEATURES / SET_FEATURES).
const (
	FeatureRingIndirectDesc = 1 << 28 // VIRTIO_RING_F_INDIRECT_DESC
	FeatureRingEventIdx     = 1 << 29 // VIRTIO_RING_F_EVENT_IDX
	FeatureProtocolFeatures = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	FeatureVersion1         = 1 << 32 // VIRTIO_F_VERSION_1
	FeatureLogAll           = 1 << 26 // VHOST_F_LOG_ALL
)

// Protocol feature bits (GET_PROTOCOL_FEATURES / SET_PROTOCOL_FEATURES).
const (
	ProtocolMQ                = 1 << 0
	ProtocolLogSHMFD          = 1 << 1
	ProtocolReplyAck          = 1 << 3
	ProtocolBackendReq        = 1 << 5
	ProtocolConfig            = 1 << 9
	ProtocolBackendSendFD     = 1 << 10
	ProtocolInflightSHMFD     = 1 << 12
	ProtocolResetDevice       = 1 << 13
	ProtocolConfigureMemSlots = 1 << 15
	ProtocolStatus            = 1 << 16
	ProtocolDeviceState       = 1 << 19
)

// Per-vring fd messages (SET_VRING_KICK/CALL/ERR) carry the index in bits
// 0-7 and this flag when no fd is attached.
const (
	VringIndexMask = 0xff
	VringNoFDFlag  = 0x100
)

// Header is the fixed part of every message.
type Header struct {
	Request Request
	Flags   uint32
	Size    uint32
}

func (h Header) Encode(b []byte) {
	binary.LittleEndian.PutUint32(b[0:], uint32(h.Request))
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint32(b[8:], h.Size)
}

func DecodeHeader(b []byte) Header {
	return Header{
		Request: Request(binary.LittleEndian.Uint32(b[0:])),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
}

// Payload layouts.
const (
	SizeU64        = 8
	SizeVringState = 8  // u32 index, u32 num
	SizeVringAddr  = 40 // u32 index, u32 flags, u64 desc, used, avail, log
	SizeRegion     = 32 // u64 gpa, size, uaddr, mmap offset
	SizeMemTable   = 8  // u32 nregions, u32 padding, then regions
	SizeMemRegMsg  = 8 + SizeRegion
	SizeLog        = 16 // u64 mmap size, u64 mmap offset
	SizeConfigHdr  = 12 // u32 offset, u32 size, u32 flags
	SizeDevState   = 8  // u32 transfer direction, u32 migration phase
)

// VringState is the payload of SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE.
type VringState struct{ Index, Num uint32 }

func DecodeVringState(b []byte) VringState {
	return VringState{binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])}
}

func (s VringState) encode() []byte {
	b := make([]byte, SizeVringState)
	binary.LittleEndian.PutUint32(b, s.Index)
	binary.LittleEndian.PutUint32(b[4:], s.Num)
	return b
}

// VringAddr is the payload of SET_VRING_ADDR. Addresses are the
// front-end's virtual addresses, except Log, a guest physical address.
type VringAddr struct {
	Index, Flags                       uint32
	DescUser, UsedUser, AvailUser, Log uint64
}

// VringAddrFLog asks for logging of used-ring writes.
const VringAddrFLog = 1

func DecodeVringAddr(b []byte) VringAddr {
	le := binary.LittleEndian
	return VringAddr{le.Uint32(b), le.Uint32(b[4:]), le.Uint64(b[8:]), le.Uint64(b[16:]), le.Uint64(b[24:]), le.Uint64(b[32:])}
}

func (a VringAddr) encode() []byte {
	le := binary.LittleEndian
	b := make([]byte, SizeVringAddr)
	le.PutUint32(b, a.Index)
	le.PutUint32(b[4:], a.Flags)
	le.PutUint64(b[8:], a.DescUser)
	le.PutUint64(b[16:], a.UsedUser)
	le.PutUint64(b[24:], a.AvailUser)
	le.PutUint64(b[32:], a.Log)
	return b
}

func DecodeRegion(b []byte) virtqueue.RegionLayout {
	le := binary.LittleEndian
	return virtqueue.RegionLayout{GuestPhysAddr: le.Uint64(b), Size: le.Uint64(b[8:]), UserAddr: le.Uint64(b[16:]), MmapOffset: le.Uint64(b[24:])}
}

func encodeRegion(b []byte, l virtqueue.RegionLayout) {
	le := binary.LittleEndian
	le.PutUint64(b, l.GuestPhysAddr)
	le.PutUint64(b[8:], l.Size)
	le.PutUint64(b[16:], l.UserAddr)
	le.PutUint64(b[24:], l.MmapOffset)
}

// EncodeMemTable builds a SET_MEM_TABLE payload.
func EncodeMemTable(regions []virtqueue.RegionLayout) []byte {
	b := make([]byte, SizeMemTable+SizeRegion*len(regions))
	binary.LittleEndian.PutUint32(b, uint32(len(regions)))
	for i, r := range regions {
		encodeRegion(b[SizeMemTable+SizeRegion*i:], r)
	}
	return b
}

// EncodeMemReg builds an ADD_MEM_REG/REM_MEM_REG payload.
func EncodeMemReg(r virtqueue.RegionLayout) []byte {
	b := make([]byte, SizeMemRegMsg)
	encodeRegion(b[8:], r)
	return b
}

// EncodeU64 builds a u64 payload.
func EncodeU64(v uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	return b
}

// EncodeVringState builds a vring state payload.
func EncodeVringState(index, num uint32) []byte { return VringState{index, num}.encode() }

// EncodeVringAddr builds a SET_VRING_ADDR payload.
func EncodeVringAddr(a VringAddr) []byte { return a.encode() }

// EncodeConfig builds a GET_CONFIG/SET_CONFIG payload.
func EncodeConfig(offset uint32, data []byte) []byte {
	b := make([]byte, SizeConfigHdr+len(data))
	binary.LittleEndian.PutUint32(b, offset)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(data)))
	copy(b[SizeConfigHdr:], data)
	return b
}

// Virtio-fs configuration space (virtio spec §5.11.4).
const (
	FSTagSize    = 36
	FSConfigSize = FSTagSize + 4 // tag[36], le32 num_request_queues
)

// Device state transfer (SET_DEVICE_STATE_FD).
const (
	DeviceStateSave      = 0 // VHOST_USER_TRANSFER_STATE_DIRECTION_SAVE
	DeviceStateLoad      = 1 // ..._LOAD
	DeviceStatePhaseStop = 0 // VHOST_USER_TRANSFER_STATE_PHASE_STOPPED
)
