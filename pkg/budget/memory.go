package budget

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultMemoryLimit is the limit the budgets are sized for when the
// process has none: the shipped Deployment's.
const DefaultMemoryLimit = 256 << 20

// ReservedBytes is what a replica needs besides the work in flight: the Go
// runtime, TLS, the key ring, and the document and data-key caches at their
// default sizes (measured in the flood test: docs/operations.md, "Sizing").
const ReservedBytes = 72 << 20

// DecryptFactor is how many bytes of memory one byte of SOPS payload holds
// at its peak while it is decrypted, in the costliest format (YAML: sops'
// node tree, the decrypted tree and yaml's encoder), rounded up.
const DecryptFactor = 32

// BodyFactor is how many bytes one byte of request body holds while a
// request is handled: the body, the review's copy of the object, and the
// object's decoded data.
const BodyFactor = 4

// MinConnections is the fewest connections a replica holds open, however
// small its limit: more than the API server keeps to one webhook at a
// modest load.
const MinConnections = 64

// Sizes are what a memory limit affords one replica.
type Sizes struct {
	// Limit is the memory limit the sizes derive from.
	Limit int64
	// GoMemLimit is the soft limit for the Go runtime: 90 % of Limit.
	GoMemLimit int64
	// Decrypt is the decryption budget in bytes of SOPS payload.
	Decrypt int64
	// Bodies is the budget in bytes of large request bodies.
	Bodies int64
	// Connections caps the connections the admission endpoint holds open.
	Connections int
}

// goMemLimitTenths is GOMEMLIMIT in tenths of the memory limit: the rest
// is headroom for what the Go runtime does not count, and for the time
// the collector takes to react.
const goMemLimitTenths = 9

// MinDecryptBytes and MinBodyBytes are the least decryption and body
// budgets: one of the largest documents (1 MiB) decrypts, and a body as
// large as the API server sends (3 MiB) is read, however small the limit.
const (
	MinDecryptBytes = 1 << 20
	MinBodyBytes    = 4 << 20
)

// ForLimit sizes a replica with memory limit bytes: GOMEMLIMIT at 90 %, a
// sixteenth of the limit for open connections at ConnectionCost each, and
// what is left of the 90 % beyond those and ReservedBytes shared between
// decryption (at DecryptFactor) and request bodies (at BodyFactor). Each budget admits at
// least one of the largest documents (1 MiB), so a small limit slows heavy
// work down rather than refusing all of it.
func ForLimit(limit int64) Sizes {
	s := Sizes{Limit: limit, GoMemLimit: limit / 10 * goMemLimitTenths}
	// A sixteenth of the limit for open connections (170 at the default
	// limit), at least MinConnections of them.
	conns := limit / 16 / ConnectionCost
	s.Connections = int(max(conns, MinConnections))
	spare := max(s.GoMemLimit-ReservedBytes-int64(s.Connections)*ConnectionCost, 0)
	s.Decrypt = max(spare/2/DecryptFactor, MinDecryptBytes)
	s.Bodies = max(spare/2/BodyFactor, MinBodyBytes)
	return s
}

// MemoryLimit returns this process's memory limit in bytes and where it was
// read: the environment variable env when set (the Downward API's
// limits.memory), else its memory cgroup's limit (v2 memory.max, v1
// memory.limit_in_bytes). It returns 0 when there is no limit.
func MemoryLimit(env string) (limit int64, source string, err error) {
	if v := os.Getenv(env); v != "" {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n <= 0 {
			return 0, "", fmt.Errorf("$%s=%q is not a positive number of bytes", env, v)
		}
		return n, "$" + env, nil
	}
	return cgroupLimit("/proc/self/cgroup", "/sys/fs/cgroup")
}

// noLimit is where cgroup v1 reports "unlimited": a number near the largest
// int64, rounded to pages.
const noLimit = 1 << 60

// cgroupLimit reads the memory limit of this process's cgroup, given
// /proc/self/cgroup and the cgroup mount.
func cgroupLimit(procFile, root string) (int64, string, error) {
	f, err := os.Open(procFile)
	if err != nil {
		return 0, "", nil // not Linux, or no cgroups: no limit
	}
	defer f.Close()
	var candidates []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			// v2: one hierarchy; inside a cgroup namespace the path is "/".
			candidates = append(candidates, filepath.Join(root, parts[2], "memory.max"), filepath.Join(root, "memory.max"))
		case hasController(parts[1], "memory"):
			candidates = append(candidates, filepath.Join(root, "memory", parts[2], "memory.limit_in_bytes"), filepath.Join(root, "memory", "memory.limit_in_bytes"))
		}
	}
	if err := sc.Err(); err != nil {
		return 0, "", fmt.Errorf("read %s: %w", procFile, err)
	}
	for _, c := range candidates {
		b, err := os.ReadFile(c)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, "", fmt.Errorf("read %s: %w", c, err)
		}
		v := strings.TrimSpace(string(b))
		if v == "max" {
			return 0, c, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, "", fmt.Errorf("%s: %q is not a number of bytes", c, v)
		}
		if n >= noLimit {
			return 0, c, nil
		}
		return n, c, nil
	}
	return 0, "", nil
}

func hasController(list, name string) bool {
	for _, c := range strings.Split(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}
