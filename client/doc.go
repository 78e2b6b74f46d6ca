// Package client is the Mles v1 client: it connects to a Mles server (mlesd,
// or the original Rust server) over TCP, TLS or WebSocket, joins one
// (uid, channel), sends messages to the channel and receives the channel's
// frames, history first.
//
// A publisher and a subscriber:
//
//	pub, err := client.Connect("localhost:8077", "alice", "news", client.SharedKey("secret"))
//	if err != nil { ... }
//	defer pub.Close()
//	pub.Send([]byte("hello"))
//
//	sub, err := client.Connect("localhost:8077", "bob", "news", client.SharedKey("secret"))
//	if err != nil { ... }
//	for m, err := range sub.Msgs(ctx) {
//		if err != nil { break }
//		fmt.Printf("%s: %s\n", m.UID, m.Message)
//	}
//
// # The protocol, as a client sees it
//
// One connection serves exactly one (uid, channel). Connect sends the join
// frame, whose key proves the client knows the server's setting: the
// shared key (SharedKey, the server's MLES_KEY), or, without one, the
// client's own address as the server sees it (AddrKey adds the server's
// MLES_ADDR_KEY; address keys cannot work behind NAT). The server never
// answers: a refused join just closes the connection, which the next
// receive (or a later Send) reports. A joiner first receives the channel's
// history (including its own earlier messages from other connections),
// then live frames; its own live frames are never sent back to it. Frames
// with an empty message are other clients' joins (Msg.IsJoin).
//
// Over WebSocket ("ws://" or "wss://" addresses: mlesd --ws-listen, or
// mles proxy) the gateway computes the key and strips the header, so the
// key options are unused and a Msg's CID and Key are 0.
//
// # Concurrency and allocation
//
// Send, Flush, Stats and Close are safe from any goroutine; Send buffers,
// and a flusher goroutine writes what piled up in one system call. One
// goroutine at a time receives (Next or Msgs; NextFrame and Frames for
// code that only passes frames on, which skips decoding the triplet). Receiving a frame that fits
// the read buffer allocates nothing, over TCP, TLS and WebSocket alike:
// the Msg aliases the buffer and is valid until the next receive (Clone
// keeps one). A receive whose context ends returns the context's error
// and leaves the connection open.
//
// # Options
//
// As in every Config of the project, an option given 0 keeps its default
// (the Default constants), and Off (any negative value) turns off what can
// be off: DialTimeout(Off) leaves connecting to the context,
// HistoryWindow(Off) remembers nothing, MaxReconnects(Off) takes the limit
// off (reconnecting forever).
//
// # Reconnecting
//
// A Conn notices a lost connection when a receive or a write fails. One
// that nobody receives on notices only through a failing write, which on
// TCP is the second write after the server went away (the first one is
// lost): a publisher that wants to reconnect promptly should also receive.
//
// With MaxReconnects, a Conn that loses its connection dials again after a
// growing wait (ReconnectWait), rejoins the same (uid, channel) with a plain
// join, and goes on delivering. While it reconnects, Send fails with
// ErrReconnecting; frames still buffered when the connection broke are lost,
// and so are frames others sent meanwhile that the server's history no
// longer holds. The rejoin makes the server replay its history; the Conn
// remembers a 64-bit hash of each of the last HistoryWindow non-empty frames
// it delivered and of each it sent, and skips replayed frames that match,
// up to the first replayed frame that does not match (from there on
// everything is new to it). What is guaranteed:
//
//   - A frame delivered before the loss is not delivered again by the
//     replay, provided it is among the last HistoryWindow delivered (set it
//     to at least the server's --history-limit).
//   - Its own sent frames that the replay holds are not delivered (a Mles
//     server never echoes live frames either).
//   - Frames others sent during the outage that the history still holds
//     are delivered once, in the server's order.
//
// Not guaranteed: a live frame byte-identical to a remembered one, arriving
// right after a replay made only of remembered frames, is taken for history
// and skipped (the protocol advises starting each message with 16 random
// bytes, which makes frames unique); history shorter than the outage loses
// frames, and a server that restarted has no history to replay.
package client
