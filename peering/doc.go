// Package peering keeps this server's uplinks to peer Mles servers: for each
// channel that has members, one connection to each configured peer, joined
// to the channel as a client of the peer. Frames of the channel's members go
// up it; frames coming down it go to the members (the engine never sends a
// frame back up the connection it came from).
//
// An uplink is an engine connection like any other (it is handed to the
// event loops with engine.Server.AdoptUplink), so the per-frame path, its
// limits and back-pressure are the clients' own. This package only decides
// when uplinks exist and what their first frame is:
//
//   - A channel's uplinks are dialled when it gets its first member and
//     closed Linger after its last member left (a quick rejoin reuses them).
//   - A failed or closed uplink is dialled again after a wait that starts at
//     Backoff and doubles up to BackoffMax (with ±20 % jitter, so that a
//     group of servers does not retry in step). The wait starts over once
//     an uplink has carried frames or stayed up for stableAfter. After a
//     failure (a reset or timeout, not a close by either side) the redial
//     comes from the last connection's local address: the peer may still
//     hold its end of that connection (a partition, a middlebox that forgot
//     it), and with it the uplink's CID, refusing every new connection as a
//     duplicate until its keepalive gives up, minutes later if it has
//     nothing to send. A SYN from the same address makes the peer's stack
//     answer on the old connection, which this side resets, and the SYN's
//     retransmission (a second later) connects. When the address cannot be
//     had, the dial takes a fresh port.
//   - The first frame: the channel's history, when there is any, as a
//     resync whose first inner frame is the uplink's own freshly keyed join
//     (empty message); otherwise, on the first connection, the first
//     member's join frame rekeyed for the uplink (its message kept), and on
//     later ones a fresh empty join. The history is taken in the same step
//     as the uplink joins the channel, so no frame falls between the resync
//     and the live stream. Frames the peer replays from its own history
//     that this server holds, or that crossed the link before (the
//     Uplink's SeenLog, which outlives its connections), are not passed on
//     again (see engine.Uplink), so a reconnect causes no duplicates, with
//     or without history here.
//
// Restarts. A server that restarts empty gets the channel's history back
// from its peers: in their resync when they peer it, down its own new
// uplink when it peers them. Its clients, reconnected, may have sent it
// newer frames meanwhile, so that history is older than what they have.
// The engine therefore treats frames of such catch-ups (a resync's inner
// frames; the first max(history, 100) frames down a new uplink) whose
// sender is a client of this server as history only: they are not
// forwarded (every client keeps each sender's frames in order, exactly
// once, and never gets its own back); a resync's ones only fill the
// history's free room, in front, so that they never evict the server's own
// newer frames, and those down an uplink are dropped (the peer keeps
// them). The others (frames of senders elsewhere, those sent during
// the outage included) are forwarded once, as before. "A client of this
// server" is a member's uid (another server's static-CID uplink aside: its
// uid is its first member's). So a sender who sent to the restarted server
// and left before the catch-up came is not known as one, and its older
// frames are then forwarded after its newer ones; and a uid connected to
// two servers at once loses, here, its other connection's frames that come
// within a catch-up.
//
// TLS (Config.TLS): the uplink is a TLS client of the peer; the handshake
// runs in the dialling goroutine and the engine gets the plaintext through a
// socketpair (internal/tlsbridge), as for the TLS listener.
//
// Keys and CIDs. With a shared key the uplink's key is the first member's;
// with address keys it is computed for the uplink socket's own local
// address, as a client's would be. The CID is the low 32 bits of that key,
// as the original server writes it, unless a static CID is set.
//
// Loops. The duplicate-CID rule is the only loop protection Mles has: a
// server refuses a joining connection whose CID another connection on the
// channel already has. An uplink is never refused by its own server (it
// replays a member's join, CID included), and without a static CID it holds
// its CID for nobody, like the original's cid|1<<32. That stops a loop only
// when the CID that comes back round is the one that went out, which holds
// for shared keys and a loop formed from one channel's first member; with
// address keys each hop has a new CID. Topologies that can loop (rings)
// need a static CID. An uplink that comes back to its own server (a --peer
// naming this server) is refused by the engine whatever its key and CID.
//
// Static CID groups (Config.StaticCID). Every uplink of every member carries
// the group's CID, and a member's own open uplink holds that CID on its
// channel: while it is open, the member refuses any joiner with the group
// CID (the spec's rule, applied to the uplink as the active connection it
// is). So a member accepts a group link only while its own uplink is down,
// and at most one at a time. No cycle of group links can then form: of the
// links of a cycle, the one accepted last was accepted by a member whose own
// link in the cycle was already open, which that member refuses. In a ring
// of three (each member's peer is the next) at most one link is refused and
// the other two join all three; when a member dies, the survivors' links are
// retried and accepted within the back-off. In longer rings, or chains of one
// group, the rule can leave the group split into arcs, each loop-free: use
// rings of three, or group members peered to common servers outside the
// group.
//
// Config follows the project's one rule for settings: zero means the
// default (DefaultBackoff, DefaultLinger, ...), and Off (any negative
// value) turns a setting off where it can be off.
package peering
