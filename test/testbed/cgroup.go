package testbed

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// CgroupRoot is where the cgroup file systems are mounted.
const CgroupRoot = "/sys/fs/cgroup"

// MemoryCgroup is a memory cgroup the test bed creates with a hard limit and
// no swap, to run a process at a container's memory limit: cgroup v1's
// memory controller, or cgroup v2. Creating one needs root.
type MemoryCgroup struct {
	// Dir is the cgroup's folder.
	Dir string
	v2  bool
}

// NewMemoryCgroup creates a memory cgroup named name plus a random suffix,
// limited to limit bytes of memory and no swap.
func NewMemoryCgroup(name string, limit int64) (*MemoryCgroup, error) {
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	name += "-" + hex.EncodeToString(suffix)
	limitText := strconv.FormatInt(limit, 10)
	if _, err := os.Stat(filepath.Join(CgroupRoot, "memory", "memory.limit_in_bytes")); err == nil {
		c := &MemoryCgroup{Dir: filepath.Join(CgroupRoot, "memory", name)}
		if err := os.Mkdir(c.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("memory cgroup (v1): %w (creating one needs root)", err)
		}
		if err := c.write("memory.limit_in_bytes", limitText); err != nil {
			return nil, errors.Join(err, c.Remove())
		}
		// Without swap accounting the file is absent and there is no swap
		// to limit.
		if _, err := os.Stat(filepath.Join(c.Dir, "memory.memsw.limit_in_bytes")); err == nil {
			if err := c.write("memory.memsw.limit_in_bytes", limitText); err != nil {
				return nil, errors.Join(err, c.Remove())
			}
		}
		return c, nil
	}
	controllers, err := os.ReadFile(filepath.Join(CgroupRoot, "cgroup.controllers"))
	if err != nil || !strings.Contains(string(controllers), "memory") {
		return nil, errors.New("no memory cgroup controller (v1 or v2) on this machine")
	}
	c := &MemoryCgroup{Dir: filepath.Join(CgroupRoot, name), v2: true}
	if err := os.Mkdir(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("memory cgroup (v2): %w (creating one needs root)", err)
	}
	for file, v := range map[string]string{"memory.max": limitText, "memory.swap.max": "0"} {
		if err := c.write(file, v); err != nil && file == "memory.max" {
			return nil, errors.Join(err, c.Remove())
		}
	}
	return c, nil
}

func (c *MemoryCgroup) write(file, value string) error {
	if err := os.WriteFile(filepath.Join(c.Dir, file), []byte(value), 0o644); err != nil {
		return fmt.Errorf("memory cgroup: write %s: %w", file, err)
	}
	return nil
}

// ProcsFile is the file a process writes its PID to, to join the cgroup.
func (c *MemoryCgroup) ProcsFile() string { return filepath.Join(c.Dir, "cgroup.procs") }

// Wrap returns a command line that joins the cgroup and then executes
// argv, so the process is limited from its first instruction.
func (c *MemoryCgroup) Wrap(argv ...string) []string {
	return append([]string{"/bin/sh", "-c", `echo $$ > "$1" && shift && exec "$@"`, "sh", c.ProcsFile()}, argv...)
}

// Peak returns the most memory the cgroup has used, in bytes.
func (c *MemoryCgroup) Peak() (int64, error) {
	return c.readBytes(map[bool]string{false: "memory.max_usage_in_bytes", true: "memory.peak"}[c.v2])
}

// Usage returns the memory the cgroup uses now, in bytes.
func (c *MemoryCgroup) Usage() (int64, error) {
	return c.readBytes(map[bool]string{false: "memory.usage_in_bytes", true: "memory.current"}[c.v2])
}

// readBytes reads a file of the cgroup that holds one number.
func (c *MemoryCgroup) readBytes(file string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(c.Dir, file))
	if err != nil {
		return 0, fmt.Errorf("memory cgroup: %w", err)
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// OOMKills returns how many processes the kernel's OOM killer ended in the
// cgroup.
func (c *MemoryCgroup) OOMKills() (int64, error) {
	file := "memory.oom_control"
	if c.v2 {
		file = "memory.events"
	}
	b, err := os.ReadFile(filepath.Join(c.Dir, file))
	if err != nil {
		return 0, fmt.Errorf("memory cgroup: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "oom_kill "); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("memory cgroup: no oom_kill count in %s", file)
}

// Remove deletes the cgroup once its processes have exited, waiting a few
// seconds for the kernel to let go of them.
func (c *MemoryCgroup) Remove() error {
	var err error
	for range 50 {
		if err = os.Remove(c.Dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("memory cgroup: %w", err)
}
