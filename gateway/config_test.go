package gateway

import (
	"math"
	"testing"
)

// Config's zero takes each default and Off lifts the count limits; the
// memory bounds cannot be off and take their default.
func TestConfigZeroIsTheDefaultAndOffLiftsCounts(t *testing.T) {
	var zero Config
	zero.setDefaults()
	if zero.MaxSessions != DefaultMaxSessions || zero.MaxPairs != DefaultMaxPairs || zero.QueueBytes != DefaultQueueBytes ||
		zero.MaxChannels != DefaultMaxChannels || zero.DialTimeout != DefaultDialTimeout {
		t.Fatalf("zero Config: %+v, want the defaults", zero)
	}
	off := Config{MaxSessions: Off, MaxSessionsPerClient: Off, MaxPairs: Off, MaxPairsPerClient: Off, MaxChannels: Off,
		QueueBytes: Off, MaxQueuedBytes: Off, MaxUnfinishedBytes: Off}
	off.setDefaults()
	if off.MaxSessions != math.MaxInt || off.MaxSessionsPerClient != math.MaxInt || off.MaxPairs != math.MaxInt ||
		off.MaxPairsPerClient != math.MaxInt || off.MaxChannels != math.MaxInt {
		t.Fatalf("Off counts: %+v, want no limit", off)
	}
	if off.QueueBytes != DefaultQueueBytes || off.MaxQueuedBytes != DefaultMaxQueuedBytes || off.MaxUnfinishedBytes != DefaultMaxUnfinishedBytes {
		t.Fatalf("Off memory bounds: %+v, want their defaults", off)
	}
}
