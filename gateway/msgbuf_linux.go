package gateway

import (
	"os"

	"golang.org/x/sys/unix"
)

var pageSize = os.Getpagesize()

func roundPage(n int) int { return (n + pageSize - 1) &^ (pageSize - 1) }

// mapAnon maps n bytes of private anonymous memory (n a multiple of the
// page size); pages cost memory only once written.
func mapAnon(n int) ([]byte, error) {
	return unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

// remap grows a mapping to n bytes, moving it if it must (the kernel moves
// page table entries; nothing is copied).
func remap(r []byte, n int) ([]byte, error) { return unix.Mremap(r, n, unix.MREMAP_MAYMOVE) }

func unmap(r []byte) { _ = unix.Munmap(r) }
