package upgrade

import "time"

// The handover's defaults and limits, each named once.
const (
	// FormatVersion is the handover format this build writes and the only
	// one it reads. Bump it for any change a reader of the previous format
	// would misread; a binary offered a format it does not know refuses
	// the handover and the old process keeps serving.
	FormatVersion = 1

	// EnvFD names the environment variable that tells a new process which
	// of its descriptors is its end of the handover socket. It is removed
	// from the environment as soon as it is read, so nothing the new
	// process starts inherits it. (mlesd exempts it from its MLESD_*
	// settings check.)
	EnvFD = "MLESD_UPGRADE_FD"

	// DefaultTimeout bounds a whole upgrade: from starting the new binary
	// to its report that it serves. 30 s covers a cold start on a loaded
	// host; past it the new process is killed and the old keeps serving.
	DefaultTimeout = 30 * time.Second

	// maxMessage is the largest handover message in bytes. Phase 1 sends
	// a header of a few hundred bytes; phase 2's state goes in many
	// messages of at most this size (doc.go).
	maxMessage = 64 << 10
	// maxFilesPerMessage is the kernel's SCM_MAX_FD: the most descriptors
	// one sendmsg may carry.
	maxFilesPerMessage = 253
	// maxListItems bounds every array and map a decoder accepts, so a
	// hostile or corrupt message cannot make it allocate without bound.
	maxListItems = 4096
	// maxNesting bounds CBOR nesting for the same reason.
	maxNesting = 8
	// reapTimeout bounds the wait for a killed child to be reaped.
	reapTimeout = 5 * time.Second
)
