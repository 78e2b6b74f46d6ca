// Package harness is the load generator behind mlesbench: it starts the servers
// under test (mlesd, nats-server, redis-server) on loopback, drives the same
// scenarios through a Driver per protocol, checks every delivery, and reports.
//
// Invariants a reader relies on:
//   - Every message a scenario publishes ends in a Trailer (publisher id, sequence
//     number, send time); receivers read it from the last TrailerLen bytes of the
//     message without decoding anything else.
//   - Every (publisher, receiver) pair is one Stream; a Stream counts unique
//     messages, duplicates and reordering, and loss is computed at the end from
//     what each publisher says it sent.
//   - Every loop is bounded in count and in time; every server started here is
//     ended by PID.
package harness
