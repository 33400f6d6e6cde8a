package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// runtimeStage is what the image takes from the Dockerfile's last stage.
type runtimeStage struct {
	// User is USER, as uid:gid.
	User string
	// Entrypoint is ENTRYPOINT, in exec form.
	Entrypoint []string
	// BinaryPath is where COPY puts the webhook binary.
	BinaryPath string
}

// userPattern is the only USER form accepted: numeric uid and gid, so the
// image needs no name lookup to drop root.
var userPattern = regexp.MustCompile(`^[0-9]+:[0-9]+$`)

// parseDockerfile reads the last stage of a Dockerfile: its USER, its
// exec-form ENTRYPOINT, and the destination of its one COPY of the
// webhook binary. Errors name the instruction that is missing or not in
// the form required.
func parseDockerfile(r io.Reader) (runtimeStage, error) {
	var st runtimeStage
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			st = runtimeStage{} // a new stage: only the last one counts
		case "USER":
			st.User = rest
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &st.Entrypoint); err != nil {
				return runtimeStage{}, fmt.Errorf("Dockerfile: ENTRYPOINT must be in exec form (a JSON array): %w", err)
			}
		case "COPY":
			fields := strings.Fields(rest)
			if len(fields) >= 2 && strings.HasSuffix(fields[len(fields)-2], "/bin/webhook") {
				st.BinaryPath = fields[len(fields)-1]
			}
		}
	}
	if err := sc.Err(); err != nil {
		return runtimeStage{}, fmt.Errorf("Dockerfile: %w", err)
	}
	switch {
	case !userPattern.MatchString(st.User):
		return runtimeStage{}, fmt.Errorf("Dockerfile: the last stage's USER %q is not a numeric uid:gid", st.User)
	case len(st.Entrypoint) == 0:
		return runtimeStage{}, fmt.Errorf("Dockerfile: the last stage has no ENTRYPOINT")
	case st.BinaryPath == "":
		return runtimeStage{}, fmt.Errorf("Dockerfile: the last stage does not COPY bin/webhook")
	case st.Entrypoint[0] != st.BinaryPath:
		return runtimeStage{}, fmt.Errorf("Dockerfile: ENTRYPOINT runs %s, but the binary is copied to %s", st.Entrypoint[0], st.BinaryPath)
	}
	return st, nil
}
