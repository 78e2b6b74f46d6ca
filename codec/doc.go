// Package codec implements the Mles v1 wire format: the 16-byte frame
// header, the CBOR (uid, channel, message) triplet, the resync payload, the
// SipHash key and CID, and the address strings that go into the key.
//
// Everything here is a pure function: no I/O, no goroutines, no global
// mutable state (apart from a buffer pool used by Key for long inputs and
// KeyConfigFromEnv, which reads the environment).
//
// Encoders produce exactly the bytes the original Rust implementation
// (mles-utils 1.1.6, serde_cbor 0.11) produces; decoders are liberal in the
// way serde is (any key order, extra keys ignored) but reject malformed CBOR,
// invalid UTF-8 and trailing bytes.
package codec
