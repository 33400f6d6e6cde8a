package node

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// NetNS is a network namespace the test bed creates for its own hosts: a
// loopback, and one veth link to the host with a private /24 and no
// default route. So a process inside can reach the host's end of the link
// and its own addresses, and a dial to anything else (a ClusterIP nobody
// backs, an address that could leave the machine) fails at once with
// "network is unreachable". Creating one needs root and iproute2.
type NetNS struct {
	// Name is the namespace's name (ip netns).
	Name string
	// HostIP is the host's end of the link, NodeIP the namespace's.
	HostIP, NodeIP string
	hostLink       string
}

// NewNetNS creates a network namespace linked to the host on the subnet
// 10.231.<subnet>.0/24.
func NewNetNS(subnet int) (*NetNS, error) {
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	id := hex.EncodeToString(suffix)
	n := &NetNS{Name: "swtb-" + id, hostLink: "swtb" + id}
	n.HostIP, n.NodeIP = netnsAddrs(subnet)
	steps := [][]string{
		{"netns", "add", n.Name},
		{"-n", n.Name, "link", "set", "lo", "up"},
		{"link", "add", n.hostLink, "type", "veth", "peer", "name", "eth0", "netns", n.Name},
		{"addr", "add", n.HostIP + "/24", "dev", n.hostLink},
		{"link", "set", n.hostLink, "up"},
		{"-n", n.Name, "addr", "add", n.NodeIP + "/24", "dev", "eth0"},
		{"-n", n.Name, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return nil, errors.Join(err, n.Delete())
		}
	}
	return n, nil
}

// netnsAddrs are the host's and the namespace's addresses on the link of
// subnet.
func netnsAddrs(subnet int) (host, node string) {
	return fmt.Sprintf("10.231.%d.1", subnet), fmt.Sprintf("10.231.%d.2", subnet)
}

// Wrap returns argv run inside the namespace.
func (n *NetNS) Wrap(argv ...string) []string {
	return append([]string{"ip", "netns", "exec", n.Name}, argv...)
}

// Delete removes the namespace and the host's end of the link. Processes
// still inside keep it alive until they exit: stop them first.
func (n *NetNS) Delete() error {
	var errs []error
	if err := ip("link", "del", n.hostLink); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
		errs = append(errs, err)
	}
	if err := ip("netns", "del", n.Name); err != nil && !strings.Contains(err.Error(), "No such file") {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
