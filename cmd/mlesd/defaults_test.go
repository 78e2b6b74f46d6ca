package main

import (
	"net"
	"strconv"
	"testing"

	"github.com/mlesd/mlesd/codec"
	"github.com/mlesd/mlesd/engine"
	"github.com/mlesd/mlesd/peering"
)

// The Mles port is codec.DefaultPort everywhere; engine.DefaultListen
// spells it in a string constant, so this test keeps the two together.
func TestEveryDefaultPortIsTheMlesPort(t *testing.T) {
	_, port, err := net.SplitHostPort(engine.DefaultListen)
	if err != nil || port != strconv.Itoa(codec.DefaultPort) {
		t.Errorf("engine.DefaultListen %q: port is not codec.DefaultPort %d", engine.DefaultListen, codec.DefaultPort)
	}
	if peering.DefaultPort != codec.DefaultPort {
		t.Errorf("peering.DefaultPort %d, codec.DefaultPort %d", peering.DefaultPort, codec.DefaultPort)
	}
}
