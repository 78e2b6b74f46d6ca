// Package peering is where uplinks to peer Mles servers will live: for each
// channel with local clients, one connection to each configured peer that
// joins as a client of that channel, forwards local frames up and peer frames
// down, reconnects with back-off and resyncs history. It is not built yet
// (issue 3); mlesd has no --peer flag until it is. The engine already offers
// what it will need: engine.Server.Adopt hands a dialled connection to the
// event loops, so uplinks share the per-frame path, limits and back-pressure.
package peering
