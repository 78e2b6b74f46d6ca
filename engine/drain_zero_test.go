package engine

import "testing"

// A negative DrainTimeout stays negative (Stop closes at once, as mlesd
// --drain-timeout 0 asks); only 0 takes the default.
func TestNegativeDrainTimeoutIsKeptAndZeroIsTheDefault(t *testing.T) {
	c := Config{DrainTimeout: -1}
	c.setDefaults()
	if c.DrainTimeout >= 0 {
		t.Errorf("DrainTimeout -1 became %v", c.DrainTimeout)
	}
	c = Config{}
	c.setDefaults()
	if c.DrainTimeout != DefaultDrainTimeout {
		t.Errorf("DrainTimeout 0 became %v, want %v", c.DrainTimeout, DefaultDrainTimeout)
	}
}
