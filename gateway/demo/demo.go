// Package demo is the small chat page the WebSocket gateway serves at "/":
// join a channel with a uid, see its messages live (history first), send
// messages. One static HTML file with its script, plus the vendored CBOR
// library cbor-x (MIT, see static/cbor-x.LICENSE.txt), all embedded.
package demo

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// FS holds index.html, demo.js, cbor-x.min.js and cbor-x.LICENSE.txt.
var FS, _ = fs.Sub(static, "static")

// Handler serves FS ("/" is index.html).
func Handler() http.Handler {
	fileServer := http.FileServerFS(FS)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		fileServer.ServeHTTP(w, r)
	})
}
