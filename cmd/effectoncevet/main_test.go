package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The command is checked end to end on a throwaway module: run on its own
// and as go vet's -vettool, across two packages (so through an exported
// fact), and with the report suppressed.

const (
	clockGo = `package clock

import (
	"strconv"
	"time"
)

// Stamp is the day number: a clock value behind a helper.
func Stamp() string { return strconv.FormatInt(time.Now().Unix()/86400, 10) }
`
	sendGo = `package send

import (
	"net/http"

	"example.com/job/clock"
)

func Send(req *http.Request) {
	req.Header.Set("Idempotency-Key", "job-"+clock.Stamp())
}
`
	want = `send.go:10:16: idempotency key derived from the clock: time.Now → .Unix → / → strconv.FormatInt → clock.Stamp() → + → http.Header.Set("Idempotency-Key")`
)

func TestCommand(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	tool := filepath.Join(t.TempDir(), "effectoncevet")
	if out, err := exec.Command(gobin, "build", "-o", tool, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/job\n\ngo 1.26\n")
	write("clock/clock.go", clockGo)
	write("send/send.go", sendGo)

	run := func(name string, args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOPROXY=off", "GOWORK=off")
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		switch {
		case errors.As(err, &exit):
			return string(out), exit.ExitCode()
		case err != nil:
			t.Fatalf("%s: %v", name, err)
		}
		return string(out), 0
	}

	t.Run("ReportsOnItsOwn", func(t *testing.T) {
		out, code := run(tool, "./...")
		if code == 0 || !strings.Contains(out, want) {
			t.Errorf("effectoncevet ./...: exit %d, output:\n%s\nwant a line ending in:\n%s", code, out, want)
		}
	})
	t.Run("ReportsAsVettool", func(t *testing.T) {
		out, code := run(gobin, "vet", "-vettool="+tool, "./...")
		if code == 0 || !strings.Contains(out, want) {
			t.Errorf("go vet -vettool: exit %d, output:\n%s\nwant a line ending in:\n%s", code, out, want)
		}
	})
	t.Run("SuppressedByDirective", func(t *testing.T) {
		write("send/send.go", strings.Replace(sendGo, "\treq.Header.Set",
			"\t//effectoncevet:ignore a test of the directive\n\treq.Header.Set", 1))
		out, code := run(gobin, "vet", "-vettool="+tool, "./...")
		if code != 0 || out != "" {
			t.Errorf("go vet -vettool with the report suppressed: exit %d, output:\n%s", code, out)
		}
	})
}
