package client_test

import (
	"context"
	"fmt"
	"time"

	"github.com/mlesd/mlesd/client"
)

// A publisher sends two messages and says goodbye; a subscriber that joins
// later gets them from the channel's history.
func Example() {
	pub, err := client.Connect(exampleAddr, "alice", "example-news", client.SharedKey("secret"))
	if err != nil {
		fmt.Println(err)
		return
	}
	pub.Send([]byte("hello"))
	pub.Send([]byte("world"))
	pub.Drain(context.Background()) // flush, and wait until the server has them

	sub, err := client.Connect(exampleAddr, "bob", "example-news", client.SharedKey("secret"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n := 0
	for m, err := range sub.Msgs(ctx) {
		if err != nil {
			fmt.Println(err)
			break
		}
		fmt.Printf("%s: %s\n", m.UID, m.Message)
		if n++; n == 2 {
			break
		}
	}
	// Output:
	// alice: hello
	// alice: world
}

// Next receives one frame at a time; the Msg is valid until the next call.
func ExampleConn_Next() {
	b, err := client.Connect(exampleAddr, "b", "example-next", client.SharedKey("secret"))
	if err != nil {
		fmt.Println(err)
		return
	}
	b.Send([]byte("hi a"))
	b.Drain(context.Background())

	a, err := client.Connect(exampleAddr, "a", "example-next", client.SharedKey("secret"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := a.Next(ctx) // from the channel's history
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s: %s (join: %v)\n", m.UID, m.Message, m.IsJoin())
	// Output: b: hi a (join: false)
}

// A subscriber that survives server restarts: it rejoins with a growing
// wait and skips the history frames it has already delivered.
func ExampleMaxReconnects() {
	sub, err := client.Connect(exampleAddr, "carol", "example-reconnect",
		client.SharedKey("secret"),
		client.MaxReconnects(-1), // forever
		client.ReconnectWait(100*time.Millisecond, 10*time.Second),
		client.DisconnectErrHandler(func(_ *client.Conn, err error) { /* log err */ }),
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Close()
	fmt.Println(sub.UID(), sub.Channel())
	// Output: carol example-reconnect
}
