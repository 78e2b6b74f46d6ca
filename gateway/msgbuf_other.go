//go:build !linux

package gateway

// Without mremap, "mapped" buffers are plain heap slices: the budget still
// bounds them, but their memory returns when the Go heap shrinks.

const pageSize = 4096

func roundPage(n int) int { return (n + pageSize - 1) &^ (pageSize - 1) }

func mapAnon(n int) ([]byte, error) { return make([]byte, n), nil }

func remap(r []byte, n int) ([]byte, error) {
	nr := make([]byte, n)
	copy(nr, r)
	return nr, nil
}

func unmap([]byte) {}
