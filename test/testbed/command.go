package testbed

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// CommandTB lets commands (make bench, make soak) use the test bed's helpers,
// which take a testing.TB. A failure panics with a CommandFailure; the
// command's run function recovers it with Recover.
type CommandTB struct {
	testing.TB
	dir      string
	cleanups []func()
}

// CommandFailure is the panic value of a failed helper.
type CommandFailure struct{ Msg string }

// NewCommandTB returns a CommandTB whose temporary folders live in dir.
func NewCommandTB(dir string) *CommandTB { return &CommandTB{dir: dir} }

// Helper does nothing.
func (*CommandTB) Helper() {}

// Fatal panics with a CommandFailure.
func (*CommandTB) Fatal(a ...any) { panic(CommandFailure{fmt.Sprint(a...)}) }

// Fatalf panics with a CommandFailure.
func (*CommandTB) Fatalf(format string, a ...any) { panic(CommandFailure{fmt.Sprintf(format, a...)}) }

// Logf prints.
func (*CommandTB) Logf(format string, a ...any) { fmt.Printf(format+"\n", a...) }

// Cleanup registers f for Close.
func (c *CommandTB) Cleanup(f func()) { c.cleanups = append(c.cleanups, f) }

// TempDir makes a folder under the CommandTB's folder.
func (c *CommandTB) TempDir() string {
	d, err := os.MkdirTemp(c.dir, "t")
	if err != nil {
		c.Fatal(err)
	}
	return d
}

// Close runs the cleanups, last first.
func (c *CommandTB) Close() {
	for i := len(c.cleanups) - 1; i >= 0; i-- {
		c.cleanups[i]()
	}
}

// Recover turns a CommandFailure panic into *err; call it deferred.
func Recover(err *error) {
	if r := recover(); r != nil {
		f, ok := r.(CommandFailure)
		if !ok {
			panic(r)
		}
		*err = fmt.Errorf("%s", f.Msg)
	}
}

// ProcessMemory reads a process's current and peak resident set size in
// KiB from /proc.
func ProcessMemory(pid int) (rss, peak int64) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0
	}
	for line := range strings.Lines(string(raw)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			peak = v
		}
	}
	return rss, peak
}

// Progress returns a function that prints a line of a tool's progress,
// "==> [tool hh:mm:ss] ...", as make's long targets show it.
func Progress(tool string) func(format string, a ...any) {
	return func(format string, a ...any) {
		fmt.Printf("==> [%s %s] "+format+"\n", append([]any{tool, time.Now().Format("15:04:05")}, a...)...)
	}
}
