package node

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNetNS checks the network rule of the test bed's own hosts: inside the
// namespace, a dial to an unbacked ClusterIP or to an address that could
// leave the machine fails at once (no route), and a dial to the host's end
// of the link works; deleting it leaves no namespace and no link behind.
func TestNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating a network namespace needs root")
	}
	n, err := NewNetNS(250)
	require.NoError(t, err)
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			_ = n.Delete()
		}
	})

	dial := func(addr, port string) (string, error) {
		argv := n.Wrap("bash", "-c", "exec 3<>/dev/tcp/"+addr+"/"+port)
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		return string(out), err
	}
	// 10.96.0.1: the kubernetes Service's ClusterIP in the test bed's
	// service range; 192.0.2.1: TEST-NET-1, never routed anywhere.
	for _, addr := range []string{"10.96.0.1", "192.0.2.1"} {
		out, err := dial(addr, "443")
		require.Error(t, err, "a dial to %s from inside must fail", addr)
		assert.Contains(t, out, "Network is unreachable", "%s has no route inside", addr)
	}

	ln, err := net.Listen("tcp", n.HostIP+":0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	out, err := dial(n.HostIP, port)
	require.NoError(t, err, "a dial to the host's end of the link works: %s", out)

	require.NoError(t, n.Delete())
	deleted = true
	list, err := exec.Command("ip", "netns", "list").CombinedOutput()
	require.NoError(t, err)
	assert.NotContains(t, string(list), n.Name, "the namespace is gone")
	links, err := exec.Command("ip", "link", "show").CombinedOutput()
	require.NoError(t, err)
	assert.False(t, strings.Contains(string(links), n.hostLink+"@"), "the host's end of the link is gone")
}
