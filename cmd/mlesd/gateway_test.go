package main

import (
	"net"
	"testing"
)

func TestLoopbackAddrMapsWildcardsToLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr *net.TCPAddr
		want string
	}{
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 8077}, "127.0.0.1:8077"},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 9}, "127.0.0.1:9"},
		{&net.TCPAddr{Port: 7}, "127.0.0.1:7"},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 8077}, "10.1.2.3:8077"},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 8077}, "[::1]:8077"},
	} {
		got, err := loopbackAddr([]net.Addr{tc.addr})
		if err != nil || got != tc.want {
			t.Errorf("loopbackAddr(%v) = %q, %v; want %q", tc.addr, got, err, tc.want)
		}
	}
	if _, err := loopbackAddr(nil); err == nil {
		t.Error("loopbackAddr(nil): want an error")
	}
}
