package main

// The Mles driver registers itself; NATS and Redis live in harness.
import _ "github.com/mlesd/mlesd/bench/mlesdrv"
