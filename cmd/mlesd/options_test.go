package main

import (
	"io"
	"testing"
	"time"
)

// On the command line 0 means off; the engine's 0 is its default and its
// off is negative, so engineConfig maps every flag that may be 0 to off.
func TestZeroFlagsAreOffForTheEngine(t *testing.T) {
	o, err := parseOptions([]string{"--drain-timeout", "0", "--stall-timeout", "0", "--join-timeout", "0",
		"--frame-timeout", "0", "--frame-min-rate", "0", "--max-conns", "0", "--max-conns-per-ip", "0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c := engineConfig(o, nil, nil)
	for name, v := range map[string]time.Duration{"DrainTimeout": c.DrainTimeout, "StallTimeout": c.StallTimeout,
		"JoinTimeout": c.JoinTimeout, "FrameTimeout": c.FrameTimeout} {
		if v >= 0 {
			t.Errorf("%s = %v for a 0 flag, want negative (off)", name, v)
		}
	}
	for name, v := range map[string]int{"FrameMinRate": c.FrameMinRate, "MaxConns": c.MaxConns, "MaxConnsPerIP": c.MaxConnsPerIP} {
		if v >= 0 {
			t.Errorf("%s = %d for a 0 flag, want negative (no limit)", name, v)
		}
	}
	if c.IdleTimeout != 0 { // the engine's 0 is already never
		t.Errorf("IdleTimeout = %v", c.IdleTimeout)
	}
}
