// Package hostile holds the hostile-client suite: black-box tests that run the
// mlesd binary and attack it over real sockets (slowloris, garbage, resets,
// connection storms, stalled receivers, malformed resyncs, shutdown under
// load), then check that it is alive, still serves, and has not leaked file
// descriptors, goroutines or memory. It has no code of its own.
package hostile
