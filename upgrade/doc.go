// Package upgrade replaces a running mlesd with a new binary without
// refusing a connection: the handover protocol between the old process and
// the new one, and the process mechanics around it (starting the new
// binary, the pid file, telling systemd).
//
// # Phase 1 (what this package does today)
//
// The old process (Start) makes a SOCK_SEQPACKET socket pair, starts the
// binary at the path it was started from (Executable) with its own
// arguments and environment plus EnvFD naming the new process's end
// (descriptor 3, via exec's ExtraFiles), and sends one Offer: the format
// version, its version string and PID, and the roles and configured
// addresses of the listening sockets whose descriptors ride with the same
// message (SCM_RIGHTS). The new process (Inherited) reads it, refuses any
// format but FormatVersion (Reply with Ready false and the reason: the old
// process logs it and keeps serving), builds its server on the inherited
// sockets and binds only what it did not inherit, and once it serves sends
// Reply{Ready: true} with its version. Only then does the old process close
// its copies of the listeners, tell systemd the new main PID, and send
// Commit; the new process then writes the pid file and reports READY=1.
//
// Invariants a caller relies on:
//   - The listening sockets are never closed while anyone could connect:
//     both processes hold the same sockets (one kernel accept queue) from
//     the Offer until the old process's Commit, so no connection attempt
//     is refused or reset. A connection is accepted by exactly one of them.
//   - Until Commit the old process has given up nothing. Any failure before
//     it (the new binary does not start, exits, sends what this build
//     cannot read, refuses, or is not ready within the timeout) ends with
//     the new process killed and reaped and the old one serving exactly as
//     before; a later attempt starts from scratch.
//   - Only the old process's PID is ever in the pid file until the new one
//     has taken over; the old process never removes a pid file that names
//     another process.
//   - Every message begins with its kind and format version, so a reader
//     refuses a format it does not know before it reads anything else.
//
// What does not move in phase 1: open connections. The old process keeps
// serving every connection it has (plain TCP, TLS, WebSocket, uplinks)
// until it closes or --drain-timeout passes, then exits 0. Clients of
// those connections reconnect when it closes them; new connections go to
// the new process from the moment it serves. Until then a channel is split
// between the two processes: frames do not cross from a client of the old
// process to a client of the new one (unless both are peered to the same
// server), and a joiner of the new process gets the new process's history,
// which starts empty. With --peer and a static --cid, the new process's
// uplink is refused by the peer as a duplicate CID while the old one's is
// open. A cure short of phase 2: the old process could open uplinks to the
// new one for its channels during the drain (a resync carrying its
// history), which needs the engine's member observer to be attachable
// after start.
//
// # Phase 2 (designed here, not built): moving live plain-TCP connections
//
// The goal of issue 13 is that clients notice nothing: no connection
// closes, no frame is lost, duplicated or reordered. Phase 2 moves every
// live plain-TCP connection and every uplink with its state, every
// channel's history and duplicate-CID state, and the counters. TLS and
// WebSocket sessions hold crypto and HTTP state inside Go and stay with
// the old process, draining as in phase 1.
//
// Wire form. Format 2 of the Offer sets Conns and Channels; the header is
// followed by that many ConnState and ChannelState messages, Chunk
// messages continuing any that do not fit one SOCK_SEQPACKET message (the
// kernel bounds a message by the socket's send buffer, about 200 KiB by
// default; the sender raises SO_SNDBUF and still splits), and one Totals.
// A ConnState message carries its connection's socket as SCM_RIGHTS
// descriptor FD (up to 253 per message, the kernel's SCM_MAX_FD). The
// state schema has its own version, StateFormat, in every state message.
// Negotiation: a format-1 reader refuses a format-2 Offer and says in its
// Reply which format it reads; the old process then retries once in that
// format (listeners only), so a rollback to a phase-1 build still works.
//
// Sequence, old process:
//  1. Offer as in phase 1, new process starts and reports Ready (it serves
//     new connections already: nothing of the old one's is frozen yet).
//  2. Freeze: every event loop, at its next turn, stops reading from its
//     connections and stops accepting hand-overs (uplinks, adoptions);
//     the acceptors stop. Forwarding pauses from here (target: at most
//     100 ms with 10,000 connections).
//  3. Finish the frame in progress: a receiver part-way through a frame's
//     bytes is given the rest of that frame first, for a bounded time (a
//     stalled receiver's tail moves instead: ConnState.Owed starts with
//     it, OwedWhole long), so every byte stream stays whole.
//  4. Export, per loop in parallel: each connection's ConnState (phase,
//     uid, channel, CID, join frame; the bytes of an incomplete inbound
//     frame exactly as read, Partial, and its timers as ages; what is owed
//     to it, the frame tail and the queued frames as the bytes the socket
//     still has to take; drops and stall timers), then each channel's
//     ChannelState (history frames in order, members by ConnState.ID, the
//     CIDs the duplicate rule knows, the first local join for peering),
//     then Totals (every mlesd_*_total with its labels).
//  5. Send, then wait for the new process's second Reply (imported).
//  6. Commit, and exit 0 without closing any moved socket's connection:
//     the new process holds a descriptor of each, so the old one's close
//     only drops its reference (no FIN is sent while another holds it).
//     The export must therefore never shutdown(2) a moved socket, which
//     acts on the socket, not the descriptor: the engine's close path needs
//     a "forget" variant for moved connections.
//
// Sequence, new process: import channels first (history, CIDs), then
// connections: register each socket with an event loop (gnet's Register
// with the socket as a net.Conn), restore its parser state from Partial
// (the next bytes read continue that frame), its queue from Owed (written
// before anything new; the frame-boundary offset OwedWhole lets the drop
// policy drop whole frames only), its join and membership, and the
// duplicate-CID set; restore the counters; Reply; on Commit resume reading.
// A client that sent half a frame before and the rest after is forwarded
// whole; a connection awaiting its join keeps its join timer.
//
// Uplinks move as the connections they are: same socket, same CID and
// join, resync marked sent, so the peer sees no reconnect and no resync;
// the new process's peering manager adopts them instead of dialling.
//
// Failure after the freeze: if the new process does not reply imported
// within the timeout, the old process kills it (its descriptors of the
// moved sockets go with it, harmlessly: the old still holds its own), and
// unfreezes: it reads on, nothing was lost, the pause was the only cost.
// Both processes never write to one socket: the old process writes nothing
// after the freeze; the new one writes nothing before Commit.
//
// Memory. The export is bounded by what the engine already bounds (per
// connection owed bytes by --max-pending, partial bytes by
// --max-partial-bytes, history by --max-history-bytes); it is written
// message by message, not built whole.
//
// Not yet decided: whether a freeze longer than the pause target should
// abort the upgrade and fall back to the phase-1 handover.
package upgrade
