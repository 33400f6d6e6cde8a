package node

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/testpki"
)

// PauseImage is the sandbox image the node's containerd uses; StartNode
// builds it from test/testbed/pause and imports it.
const PauseImage = "testbed.local/pause:1"

// NodeName is the name the node registers with.
const NodeName = "testbed-node"

// The node's address ranges: Services' ClusterIPs (the `kubernetes`
// Service takes APIServiceIP, the first) and pods' IPs on the CNI bridge.
// Both exist only inside the node's network namespace.
const (
	ServiceCIDR  = "10.96.0.0/24"
	APIServiceIP = "10.96.0.1"
	PodCIDR      = "10.232.0.0/24"
	// BridgeIP is the node's address on the pods' bridge: what pods see
	// as the source of the node's own connections, the API server's calls
	// to webhooks among them.
	BridgeIP = "10.232.0.1"
)

// Node is the test bed's real single-node cluster: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, containerd, the kubelet and
// kube-proxy, all in a network namespace of their own (NetNS: no route
// out), the containers on a CNI bridge inside it. The API server serves the
// host on the namespace's address and reaches Services through their
// endpoints (--enable-aggregator-routing), webhooks included; pods reach it
// through the kubernetes Service, which kube-proxy DNATs inside the
// namespace. No component dials an address outside the namespace. The host
// reaches the pods through a route to PodCIDR over the namespace's link.
// Authorization is RBAC; the kubelet's user is also in system:masters (a
// test bed, not a hardened node). The data plane shares one private mount
// namespace, so the kubelet's mounts vanish with it; Stop stops everything
// by PID and puts back what the kubelet changes on the host (cgroups,
// sysctls); iptables rules live and die with the namespace.
type Node struct {
	NS         *NetNS
	Config     *rest.Config
	Client     client.Client
	Kubeconfig string

	env     *envtest.Environment
	work    string
	bin     string
	holder  *exec.Cmd
	procs   []*nodeProc
	cgroup  string
	sysctls map[string]string
}

type nodeProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// kernelTunables are the sysctls the kubelet sets on the host at start.
var kernelTunables = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// StartNode starts the node in work (a fresh folder) and waits until it is
// Ready. Only one node runs at a time.
func StartNode(ctx context.Context, work string) (*Node, error) {
	tools, err := sopskit.Load()
	if err != nil {
		return nil, err
	}
	if tools.NodeBin == "" {
		return nil, errors.New("the node is not in the test bed; run: test/testbed/install.sh node")
	}
	if err := cleanStaleNode(); err != nil {
		return nil, fmt.Errorf("the node of an earlier run is left: %w", err)
	}
	n := &Node{work: work, bin: tools.NodeBin, sysctls: map[string]string{}}
	for _, s := range kernelTunables {
		if b, err := os.ReadFile(filepath.Join("/proc/sys", s)); err == nil {
			n.sysctls[s] = strings.TrimSpace(string(b))
		}
	}
	if err := n.start(ctx, tools); err != nil {
		return nil, errors.Join(err, n.Stop())
	}
	return n, nil
}

func (n *Node) start(ctx context.Context, tools sopskit.Tools) error {
	var err error
	if n.NS, err = NewNetNS(nodeSubnet); err != nil {
		return err
	}
	if err := n.startControlPlane(tools); err != nil {
		return err
	}
	// The host reaches the pods through the node, so tests can talk to
	// a pod as the API server does; the route goes with the link.
	if err := ip("route", "add", PodCIDR, "via", n.NS.NodeIP, "dev", n.NS.hostLink); err != nil {
		return err
	}
	return n.startDataPlane(ctx)
}

// wrapper writes a script that runs binary inside the namespace, for envtest
// to start (it execs, so the PID is the binary's).
func (n *Node) wrapper(binary string) (string, error) {
	p := filepath.Join(n.work, "ns-"+filepath.Base(binary))
	script := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", n.NS.Name, binary)
	return p, os.WriteFile(p, []byte(script), 0o755)
}

// apiServerCerts writes the API server's serving certificate and service
// account signer into a folder of the node's and points api at it. envtest
// would issue one for the listen address only; pods verify the
// `kubernetes` Service's ClusterIP and DNS names, as on a real cluster.
func (n *Node) apiServerCerts(api *envtest.APIServer) error {
	dir := filepath.Join(n.work, "apiserver")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	serving, err := testpki.NewTLS([]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local", "localhost", n.NS.NodeIP, APIServiceIP}, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("the API server's certificate: %w", err)
	}
	signer, err := testpki.NewTLS([]string{"service-accounts"}, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("the service account signer: %w", err)
	}
	// The names envtest looks for (it issues none when apiserver.crt exists).
	files := map[string][]byte{
		"apiserver.crt": serving.Cert, "apiserver.key": serving.Key,
		"sa-signer.crt": signer.Cert, "sa-signer.key": signer.Key,
	}
	for f, b := range files {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			return err
		}
	}
	api.CertDir = dir
	api.SecureServing.CA = serving.CACert
	return nil
}

func (n *Node) startControlPlane(tools sopskit.Tools) error {
	apiserver, err := n.wrapper(filepath.Join(tools.KubebuilderAssets, "kube-apiserver"))
	if err != nil {
		return err
	}
	etcd, err := n.wrapper(filepath.Join(tools.KubebuilderAssets, "etcd"))
	if err != nil {
		return err
	}
	n.env = &envtest.Environment{}
	n.env.ControlPlane.Etcd = &envtest.Etcd{Path: etcd, URL: &url.URL{Scheme: "http", Host: net.JoinHostPort(n.NS.NodeIP, "2379")}}
	api := &envtest.APIServer{Path: apiserver}
	if err := n.apiServerCerts(api); err != nil {
		return err
	}
	id, err := testbed.LoadAPIServerClient()
	if err != nil {
		return err
	}
	api.SecureServing.ListenAddr.Address = n.NS.NodeIP
	api.SecureServing.ListenAddr.Port = "6443"
	api.Configure().
		Set("enable-aggregator-routing", "true").
		// envtest turns the ServiceAccount admission plugin off; pods need
		// it for their token, and the API server reaches the kubelet by
		// address, not by a name it would look up.
		Disable("disable-admission-plugins").
		Set("kubelet-preferred-address-types", "InternalIP").
		Set("service-cluster-ip-range", ServiceCIDR).
		Set("advertise-address", n.NS.NodeIP).
		// It presents the test bed's client certificate to webhooks.
		Set("admission-control-config-file", id.AdmissionConfig)
	n.env.ControlPlane.APIServer = api
	if n.Config, err = n.env.Start(); err != nil {
		return fmt.Errorf("start the node's control plane: %w", err)
	}
	if n.Client, err = client.New(n.Config, client.Options{}); err != nil {
		return err
	}
	n.Kubeconfig = filepath.Join(n.work, "admin.kubeconfig")
	return testbed.WriteKubeconfig(n.env, n.Kubeconfig, envtest.User{Name: "admin", Groups: []string{"system:masters"}})
}

func (n *Node) startDataPlane(ctx context.Context) error {
	dirs := map[string]string{}
	for _, d := range []string{"containerd/root", "containerd/state", "cni", "kubelet", "logs", "logs/pods"} {
		dirs[d] = filepath.Join(n.work, d)
		if err := os.MkdirAll(dirs[d], 0o755); err != nil {
			return err
		}
	}
	certDir := n.env.ControlPlane.APIServer.CertDir
	ca := filepath.Join(n.work, "ca.crt")
	if err := os.WriteFile(ca, n.Config.CAData, 0o644); err != nil {
		return err
	}
	kubelet := filepath.Join(n.work, "kubelet.kubeconfig")
	if err := testbed.WriteKubeconfig(n.env, kubelet, envtest.User{Name: "system:node:" + NodeName, Groups: []string{"system:nodes", "system:masters"}}); err != nil {
		return err
	}
	// The kubelet puts every pod under the cgroup root, which must exist in
	// each hierarchy; Stop removes it.
	n.cgroup = "/" + n.NS.Name
	if err := makeCgroups(n.cgroup); err != nil {
		return err
	}
	sock := n.containerdSock()

	files := map[string]string{
		"containerd.toml": fmt.Sprintf(`version = 3
root = %q
state = %q
[grpc]
  address = %q
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%q]
    conf_dir = %q
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = %q
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = %q
`, dirs["containerd/root"], dirs["containerd/state"], sock, n.bin, dirs["cni"], filepath.Join(n.bin, "runc"), PauseImage),
		"cni/10-bridge.conflist": fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "testbed", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}
`, PodCIDR),
		// kube-proxy DNATs ClusterIPs to endpoints inside the namespace, as
		// on a real node; it leaves the host's conntrack sysctls alone
		// (zeros) and does not route localhost to NodePorts.
		"kube-proxy.yaml": fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %q}
hostnameOverride: %s
mode: iptables
clusterCIDR: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
`, n.Kubeconfig, NodeName, PodCIDR),
		"kubelet.yaml": fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: %q}}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
testbed.CgroupRoot: %s
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
resolvConf: ""
syncFrequency: 5s
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
registerNode: true
podLogsDir: %s
`, n.NS.NodeIP, filepath.Join(certDir, "client-cert-auth-ca.crt"), n.cgroup, sock, dirs["logs/pods"]),
	}
	for f, body := range files {
		if err := os.WriteFile(filepath.Join(n.work, f), []byte(body), 0o644); err != nil {
			return err
		}
	}

	// The holder keeps the data plane's private mount namespace; every
	// data-plane process enters it and the network namespace.
	// Not `ip netns exec`: it remounts /sys, which hides the cgroup mounts
	// the kubelet and runc need.
	n.holder = exec.Command("unshare", "--mount", "--propagation", "private", "--",
		"nsenter", "--net=/var/run/netns/"+n.NS.Name, "--", "sleep", "infinity")
	if err := n.holder.Start(); err != nil {
		return fmt.Errorf("start the mount namespace holder: %w", err)
	}
	time.Sleep(200 * time.Millisecond)

	path := n.bin + ":" + os.Getenv("PATH")
	if err := n.run("containerd", []string{"PATH=" + path}, filepath.Join(n.bin, "containerd"), "--config", filepath.Join(n.work, "containerd.toml")); err != nil {
		return err
	}
	if err := waitSocket(ctx, sock); err != nil {
		return fmt.Errorf("containerd: %w\n%s", err, n.Log("containerd"))
	}
	if err := n.importPause(ctx, sock); err != nil {
		return err
	}
	if err := n.run("kubelet", []string{"PATH=" + path}, filepath.Join(n.bin, "kubelet"),
		"--config", filepath.Join(n.work, "kubelet.yaml"), "--kubeconfig", kubelet,
		"--root-dir", dirs["kubelet"], "--cert-dir", filepath.Join(dirs["kubelet"], "pki"),
		"--hostname-override", NodeName, "--node-ip", n.NS.NodeIP, "--v", "2"); err != nil {
		return err
	}
	admin := n.Kubeconfig
	if err := n.run("kube-controller-manager", nil, filepath.Join(n.bin, "kube-controller-manager"),
		"--kubeconfig", admin, "--authentication-kubeconfig", admin, "--authorization-kubeconfig", admin,
		"--service-account-private-key-file", filepath.Join(certDir, "sa-signer.key"),
		"--root-ca-file", ca, "--use-service-account-credentials=false", "--leader-elect=false",
		"--bind-address", "127.0.0.1", "--secure-port", "10257"); err != nil {
		return err
	}
	if err := n.run("kube-scheduler", nil, filepath.Join(n.bin, "kube-scheduler"),
		"--kubeconfig", admin, "--authentication-kubeconfig", admin, "--authorization-kubeconfig", admin,
		"--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", "10259"); err != nil {
		return err
	}
	if err := n.run("kube-proxy", []string{"PATH=" + path}, filepath.Join(n.bin, "kube-proxy"),
		"--config", filepath.Join(n.work, "kube-proxy.yaml")); err != nil {
		return err
	}
	return n.waitReady(ctx)
}

// run starts a data-plane process inside the holder's namespaces.
func (n *Node) run(name string, env []string, argv ...string) error {
	log, err := os.Create(filepath.Join(n.work, "logs", name+".log"))
	if err != nil {
		return err
	}
	args := append([]string{"-t", strconv.Itoa(n.holder.Process.Pid), "-m", "-n", "--"}, argv...)
	cmd := exec.Command("nsenter", args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &nodeProc{name: name, cmd: cmd, done: make(chan struct{}), log: log}
	go func() { _ = cmd.Wait(); close(p.done) }()
	n.procs = append(n.procs, p)
	return nil
}

// Log returns the end of the log of one of the node's processes (containerd,
// kubelet, kube-controller-manager, kube-scheduler, kube-proxy).
func (n *Node) Log(name string) string {
	b, _ := os.ReadFile(filepath.Join(n.work, "logs", name+".log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func waitSocket(ctx context.Context, path string) error {
	for {
		if c, err := net.Dial("unix", path); err == nil {
			return c.Close()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no socket %s: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// importPause builds the sandbox image from test/testbed/pause and imports
// it.
func (n *Node) importPause(ctx context.Context, sock string) error {
	root, err := sopskit.RepoRoot()
	if err != nil {
		return err
	}
	bin := filepath.Join(n.work, "pause")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./test/testbed/pause")
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build pause: %w: %s", err, out)
	}
	archive := filepath.Join(n.work, "pause.tar")
	if err := WriteBinaryImage(bin, "/pause", PauseImage, archive); err != nil {
		return err
	}
	return n.ImportImage(ctx, archive)
}

// containerdSock is the node's containerd socket.
func (n *Node) containerdSock() string { return filepath.Join(n.work, "containerd", "containerd.sock") }

// ctr runs containerd's CLI on the kubelet's namespace and returns its
// output; the error carries it.
func (n *Node) ctr(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, filepath.Join(n.bin, "ctr"), append([]string{"--address", n.containerdSock(), "-n", "k8s.io"}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// ImportImage imports a docker or OCI archive into the node's containerd.
func (n *Node) ImportImage(ctx context.Context, archive string) error {
	_, err := n.ctr(ctx, "images", "import", archive)
	return err
}

// ContainerPID returns the host PID of a running container's first
// process; containerID is a pod status's containerID (containerd://…).
func (n *Node) ContainerPID(ctx context.Context, containerID string) (int, error) {
	id := strings.TrimPrefix(containerID, "containerd://")
	out, err := n.ctr(ctx, "tasks", "ls")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id && f[2] == "RUNNING" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no running task %s", id)
}

// WriteBinaryImage writes a docker archive of a one-layer image holding a
// static binary at path, as its entrypoint, tagged tag.
func WriteBinaryImage(binary, path, tag, out string) error {
	b, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(path, "/"), Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write(b); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config = v1.Config{Entrypoint: []string{path}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(out, ref, img)
}

// waitReady waits until the node reports Ready.
func (n *Node) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		out, err := exec.CommandContext(ctx, "kubectl", "--kubeconfig", n.Kubeconfig, "get", "node", NodeName,
			"-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`).Output()
		if err == nil && string(out) == "True" {
			// The ServiceAccount admission plugin refuses pods until the
			// namespace's default ServiceAccount exists.
			err := n.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "default"}, &corev1.ServiceAccount{})
			if err == nil {
				return nil
			}
		}
		for _, p := range n.procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited:\n%s", p.name, n.Log(p.name))
			default:
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("node not Ready after 2 minutes; kubelet log:\n%s", n.Log("kubelet"))
}

// Stop stops the data plane and the control plane by PID, kills what is
// left in the data plane's mount namespace (containerd's shims and the
// containers outlive containerd), and removes the namespace, the node's
// cgroups and its folders' mounts, and puts back the host's sysctls.
func (n *Node) Stop() error {
	var errs []error
	for i := len(n.procs) - 1; i >= 0; i-- {
		p := n.procs[i]
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		_ = p.log.Close()
	}
	if n.holder != nil && n.holder.Process != nil {
		errs = append(errs, killNamespace(n.holder.Process.Pid))
		_ = n.holder.Process.Kill()
		_ = n.holder.Wait()
	}
	if n.env != nil {
		errs = append(errs, n.env.Stop())
	}
	if n.cgroup != "" {
		errs = append(errs, removeCgroups(n.cgroup))
	}
	if n.NS != nil {
		errs = append(errs, n.NS.Delete())
	}
	for s, v := range n.sysctls {
		cur, _ := os.ReadFile(filepath.Join("/proc/sys", s))
		if strings.TrimSpace(string(cur)) != v {
			errs = append(errs, os.WriteFile(filepath.Join("/proc/sys", s), []byte(v), 0o644))
		}
	}
	return errors.Join(errs...)
}

// nodeSubnet is the third octet of the node's link to the host.
const nodeSubnet = 200

// cleanStaleNode removes what a node left when its test was killed before
// Stop: the processes in its network namespace, its cgroups (and the
// containers in them), and the namespace. It knows the node's namespace by
// the node's address.
func cleanStaleNode() error {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("ip netns list: %w", err)
	}
	_, nodeIP := netnsAddrs(nodeSubnet)
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if !strings.HasPrefix(name, "swtb-") {
			continue
		}
		addrs, err := exec.Command("ip", "-n", name, "-o", "addr").Output()
		if err != nil || !strings.Contains(string(addrs), " "+nodeIP+"/") {
			continue
		}
		pids, _ := exec.Command("ip", "netns", "pids", name).Output()
		for _, f := range strings.Fields(string(pids)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		errs = append(errs, removeCgroups("/"+name), ip("netns", "del", name))
	}
	return errors.Join(errs...)
}

// killNamespace kills every process, other than holder, in the mount
// namespace of holder.
func killNamespace(holder int) error {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", holder))
	if err != nil {
		return err
	}
	for range 20 {
		entries, err := os.ReadDir("/proc")
		if err != nil {
			return err
		}
		left := 0
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == holder {
				continue
			}
			if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && l == ns {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				left++
			}
		}
		if left == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("processes left in the node's mount namespace")
}

// makeCgroups creates the cgroup folder rel in every hierarchy.
func makeCgroups(rel string) error {
	roots, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, r := range roots {
		if err := os.MkdirAll(filepath.Join(r, rel), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// cgroupHierarchies lists the mounted cgroup hierarchies: the v1
// controllers' folders, or the v2 root.
func cgroupHierarchies() ([]string, error) {
	if _, err := os.Stat(filepath.Join(testbed.CgroupRoot, "cgroup.procs")); err == nil {
		return []string{testbed.CgroupRoot}, nil
	}
	dirs, err := filepath.Glob(filepath.Join(testbed.CgroupRoot, "*"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range dirs {
		if fi, err := os.Lstat(d); err == nil && fi.IsDir() {
			if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err == nil {
				out = append(out, d)
			}
		}
	}
	return out, nil
}

// removeCgroups kills the processes left in the cgroup folder rel and under
// it, in every hierarchy, and removes the folders, deepest first.
func removeCgroups(rel string) error {
	roots, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range roots {
		top := filepath.Join(r, rel)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		// The containers run in mount namespaces of their own: kill what
		// is left in the subtree before removing it.
		for range 50 {
			left := 0
			for _, d := range dirs {
				b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						_ = syscall.Kill(pid, syscall.SIGKILL)
						left++
					}
				}
			}
			if left == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !os.IsNotExist(err) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// StartNetworkPolicy starts kube-router's NetworkPolicy firewall alone on
// the node (no routing, no service proxy, no CNI), the test bed's
// NetworkPolicy implementation: it turns the node's NetworkPolicies into
// iptables and ipset rules inside the node's namespace, filtering the
// bridge's traffic (bridge-nf-call-iptables, set in that namespace only).
// It returns once kube-router has written its first rules. Stop stops it.
func (n *Node) StartNetworkPolicy(ctx context.Context) error {
	if err := ip("netns", "exec", n.NS.Name, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"); err != nil {
		return fmt.Errorf("bridge-nf-call-iptables in the node: %w", err)
	}
	path := n.bin + ":" + os.Getenv("PATH")
	if err := n.run("kube-router", []string{"PATH=" + path}, filepath.Join(n.bin, "kube-router"),
		"--run-firewall=true", "--run-router=false", "--run-service-proxy=false", "--enable-cni=false",
		"--kubeconfig", n.Kubeconfig, "--hostname-override", NodeName,
		"--health-port", "0", "--metrics-port", "0", "--iptables-sync-period", "5s", "--v", "1"); err != nil {
		return err
	}
	iptables := filepath.Join(n.bin, "iptables")
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.NS.Name, iptables, "-S").CombinedOutput()
		if err == nil && strings.Contains(string(out), "KUBE-ROUTER-FORWARD") {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("kube-router wrote no rules within a minute:\n%s", n.Log("kube-router"))
		}
		time.Sleep(500 * time.Millisecond)
	}
}
