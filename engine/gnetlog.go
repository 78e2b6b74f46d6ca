package engine

import (
	"fmt"
	"log/slog"
	"os"
)

// gnetLogger routes gnet's own log lines into slog. gnet's info lines
// ("Launching gnet with N event-loops", a loop "is exiting") describe its
// internals, not the server, so they and its debug lines go to debug: an
// operator's info log says only what mlesd does. Warnings and errors stay.
type gnetLogger struct{ log *slog.Logger }

func (g gnetLogger) Debugf(format string, args ...any) {
	g.log.Debug("gnet: " + fmt.Sprintf(format, args...))
}
func (g gnetLogger) Infof(format string, args ...any) {
	g.log.Debug("gnet: " + fmt.Sprintf(format, args...))
}
func (g gnetLogger) Warnf(format string, args ...any) {
	g.log.Warn("gnet: " + fmt.Sprintf(format, args...))
}
func (g gnetLogger) Errorf(format string, args ...any) {
	g.log.Error("gnet: " + fmt.Sprintf(format, args...))
}
func (g gnetLogger) Fatalf(format string, args ...any) {
	g.log.Error("gnet: " + fmt.Sprintf(format, args...))
	os.Exit(1)
}
