package router

// Defaults for the router's settings (cmd/mlesd's flags use them too).
const (
	// DefaultHistoryLimit is the original server's history length.
	DefaultHistoryLimit = 100
	// DefaultMaxChannels bounds channels: a channel that holds history
	// outlives its members, so their number must be bounded.
	DefaultMaxChannels = 100_000
	// DefaultHistoryBytes caps one channel's history (room for a few
	// maximum-size frames).
	DefaultHistoryBytes = 64 << 20
	// DefaultMaxHistoryBytes caps the history of all channels together.
	DefaultMaxHistoryBytes = 1 << 30
)

// Off, given to a setting, turns it off: no history for HistoryLimit, no
// cap for the others. Any negative value means the same.
const Off = -1

// Config sets the router's history and limits. As in every Config of this
// project, zero means the default and Off (negative) means off, so the
// zero Config is the router mlesd runs with by default.
type Config struct {
	// HistoryLimit is how many frames each channel keeps for new joiners
	// (0: DefaultHistoryLimit; Off: no history). A channel with no members
	// is forgotten at once when it holds no history.
	HistoryLimit int
	// MaxChannels caps the number of channels (0: DefaultMaxChannels;
	// Off: no cap).
	MaxChannels int
	// HistoryBytes caps one channel's history in bytes (0:
	// DefaultHistoryBytes; Off: no cap); older frames are evicted first,
	// and a frame larger than the cap is not kept.
	HistoryBytes int
	// MaxHistoryBytes caps the history of all channels together (0:
	// DefaultMaxHistoryBytes; Off: no cap). A channel that would pass it
	// evicts its own oldest frames.
	MaxHistoryBytes int64
}

// resolved applies the rule: defaults for zero, and the router's inner
// form of off (0: no history, no cap) for negative values.
func (c Config) resolved() Config {
	c.HistoryLimit = resolve(c.HistoryLimit, DefaultHistoryLimit)
	c.MaxChannels = resolve(c.MaxChannels, DefaultMaxChannels)
	c.HistoryBytes = resolve(c.HistoryBytes, DefaultHistoryBytes)
	c.MaxHistoryBytes = resolve(c.MaxHistoryBytes, DefaultMaxHistoryBytes)
	return c
}

func resolve[T int | int64](v, def T) T {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0 // off
	}
	return v
}
