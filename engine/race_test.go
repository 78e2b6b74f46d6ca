//go:build race

package engine

// raceEnabled: the race detector multiplies the CPU cost of all Go code,
// so CPU bounds are not asserted under it.
const raceEnabled = true
