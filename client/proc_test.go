package client_test

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/mlesd/mlesd/internal/mlestest"
)

var syscall_ECONNRESET = syscall.ECONNRESET

// mlestestProc is an mlesd on a fixed address, for restarts.
type mlestestProc struct {
	cmd *exec.Cmd
	log *mlestest.SyncBuffer
}

// startAt runs mlesd with MLES_KEY=k on addr.
func startAt(t *testing.T, addr string) *mlestestProc {
	t.Helper()
	p := &mlestestProc{log: &mlestest.SyncBuffer{}}
	p.cmd = exec.Command(mlesdBin, "--listen", addr, "--log-level", "warn")
	p.cmd.Env = append(os.Environ(), "MLES_KEY=k")
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	waitFor(t, addr)
	return p
}

func (p *mlestestProc) stop() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		return <-done
	}
}
