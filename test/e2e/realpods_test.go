package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/flood"
	"github.com/sops-webhook/sops-webhook/test/testbed/node"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// The image the tests build and import into the node; only the image
// reference of the shipped manifests and chart is changed to it.
const (
	podsImageName = "testbed.local/sops-webhook"
	podsImageTag  = "e2e"
	// webhookNS is the namespace the docs install into.
	webhookNS = "sops-webhook"
	// The Deployment's uid and gid (manifests/base, the Dockerfile).
	webhookUID = "65532"
)

// podsBed is the test bed's real node with the webhook's image imported.
type podsBed struct {
	n    *node.Node
	work string
	// key is a hand-made key file in the keys Secret (configReload adds
	// it to the config); recipient is the current installation's default
	// key, which it generates, and doc plain's dotenv document for it.
	key        sopskit.AgeKey
	recipient  string
	doc, plain []byte
}

// installation names what one way of installing creates.
type installation struct {
	// name names the way of installing in the test's objects.
	name                                string
	deployment, service, mwc, tlsSecret string
	// recipients is the published recipients' ConfigMap (default
	// clusterkeys.DefaultConfigMapName).
	recipients string
	// selector selects the Deployment's pods.
	selector map[string]string
}

// TestRealPods installs the webhook as a platform team does, as real pods
// on the test bed's node (a kubelet, containerd, kube-proxy), and checks
// what only real pods show: the image runs as uid 65532 on a read-only
// root under Pod Security "restricted", the pods reach the API server
// through the kubernetes Service, the caBundle they patch is trusted by
// the API server, rollouts and pod deletions under writers lose no write,
// a key added through the mounted ConfigMap works without a restart, a
// flood leaves the 256 MiB containers running, and two replicas starting
// together generate one key in the cluster under the shipped RBAC.
func TestRealPods(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs a real node; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	n, err := node.StartNode(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, n.Stop(), "the node stops cleanly") })
	b := &podsBed{n: n, work: t.TempDir(), key: sopskit.NewAgeKey(t, false)}
	b.plain = []byte("PASSWORD=real-pods-PLAINTEXT-1\n")
	b.importImage(ctx, t)
	require.NoError(t, n.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{mutate.LabelDecrypt: "enabled"}}}))

	t.Run("kustomize self-managed overlay", b.kustomizeSelfManaged)
	t.Run("chart", b.chart)
	t.Run("kustomize cert-manager overlay", b.certManager)
	// Last: kube-router keeps enforcing NetworkPolicy until the node stops.
	t.Run("NetworkPolicy enforced by kube-router", b.networkPolicy)
}

func (b *podsBed) kubectl(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	out, err := runKubectl(b.n.Kubeconfig, stdin, args...)
	require.NoError(t, err)
	return out
}

// importImage builds the image as `make image` does without an engine
// (the build command of `make build`, then tools/image) and imports it.
func (b *podsBed) importImage(ctx context.Context, t *testing.T) {
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	bin, err := testbed.BuildWebhook(b.work)
	require.NoError(t, err)
	archive := filepath.Join(b.work, "image.tar")
	cmd := exec.CommandContext(ctx, "go", "run", "./tools/image", "-binary", bin, "-out", archive, "-tag", podsImageName+":"+podsImageTag)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "tools/image: %s", out)
	img, err := tarball.ImageFromPath(archive, nil)
	require.NoError(t, err)
	digest, err := img.Digest()
	require.NoError(t, err)
	fi, err := os.Stat(archive)
	require.NoError(t, err)
	t.Logf("image %s:%s: archive %.1f MiB, digest %s", podsImageName, podsImageTag, float64(fi.Size())/(1<<20), digest)
	require.NoError(t, b.n.ImportImage(ctx, archive))
}

// overlay writes a kustomization that takes dir of the repository and
// changes only the image reference, as the docs tell users to, followed by
// extra, more of the kustomization's YAML.
func (b *podsBed) overlay(t *testing.T, dir string, extra ...string) string {
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	out := filepath.Join(b.work, strings.ReplaceAll(dir, "/", "-"))
	require.NoError(t, os.MkdirAll(out, 0o755))
	rel, err := filepath.Rel(out, filepath.Join(root, dir))
	require.NoError(t, err)
	k := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [%s]
images:
  - name: ghcr.io/sops-webhook/sops-webhook
    newName: %s
    newTag: %s
`, rel, podsImageName, podsImageTag) + strings.Join(extra, "")
	require.NoError(t, os.WriteFile(filepath.Join(out, "kustomization.yaml"), []byte(k), 0o644))
	return out
}

// prepareNamespace follows docs/operations.md, "1. The keys" and "2. Who
// may ask": the namespace, enforcing Pod Security restricted, the keys
// Secret, and the ConfigMap with the CA of the API server's client
// certificate, which the manifests' base requires.
func (b *podsBed) prepareNamespace(t *testing.T) {
	b.kubectl(t, nil, "create", "namespace", webhookNS)
	b.kubectl(t, nil, "label", "namespace", webhookNS, "pod-security.kubernetes.io/enforce=restricted")
	b.kubectl(t, nil, "-n", webhookNS, "create", "secret", "generic", "sops-webhook-keys", "--from-file=default.agekey="+b.key.IdentityFile)
	id, err := testbed.LoadAPIServerClient()
	require.NoError(t, err)
	b.kubectl(t, nil, "-n", webhookNS, "create", "configmap", "sops-webhook-client-ca", "--from-file=ca.crt="+id.CAFile)
}

// deleteNamespace deletes the webhook's namespace and waits until it is
// gone with its pods.
func (b *podsBed) deleteNamespace(t *testing.T) {
	b.kubectl(t, nil, "delete", "namespace", webhookNS, "--ignore-not-found", "--wait", "--timeout=3m")
}

// pods lists the Deployment's pods that are not being deleted.
func (b *podsBed) pods(t *testing.T, in installation) []corev1.Pod {
	t.Helper()
	var list corev1.PodList
	require.NoError(t, b.n.Client.List(context.Background(), &list, client.InNamespace(webhookNS), client.MatchingLabels(in.selector)))
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out
}

// rolledOut waits until the Deployment has rolled out.
func (b *podsBed) rolledOut(t *testing.T, in installation) {
	t.Helper()
	b.kubectl(t, nil, "-n", webhookNS, "rollout", "status", "deploy/"+in.deployment, "--timeout=4m")
}

// encryptForInstall reads the recipient that in's default key, generated
// by its pods, publishes, as a chart author does, and encrypts b.doc for
// it.
func (b *podsBed) encryptForInstall(t *testing.T, in installation) {
	t.Helper()
	name := clusterkeys.DefaultConfigMapName
	if in.recipients != "" {
		name = in.recipients
	}
	var cm corev1.ConfigMap
	var pub clusterkeys.Recipients
	require.Eventually(t, func() bool {
		err := b.n.Client.Get(context.Background(), client.ObjectKey{Namespace: webhookNS, Name: name}, &cm)
		return err == nil && yaml.Unmarshal([]byte(cm.Data[clusterkeys.RecipientsEntry]), &pub) == nil && len(pub.Keys) > 0
	}, 3*time.Minute, time.Second, "%s: the default key's recipient is published", in.name)
	for _, k := range pub.Keys {
		if k.Name == "default" {
			b.recipient = k.Generations[0].Recipient
		}
	}
	require.NotEmpty(t, b.recipient, "%s: the default key is a generated one", in.name)
	b.doc = sopskit.SopsEncrypt(t, b.plain, "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: b.recipient}}})
}

// checkInstall checks a fresh installation: two Ready pods admitted under
// Pod Security restricted, running as uid 65532 on a read-only root, a
// caBundle that the pods' certificate chains to, and a decrypt through the
// API server.
func (b *podsBed) checkInstall(t *testing.T, in installation) {
	ctx := context.Background()
	b.rolledOut(t, in)
	b.encryptForInstall(t, in)
	pods := b.pods(t, in)
	require.Len(t, pods, 2, "two replicas")
	for _, p := range pods {
		require.True(t, podReady(&p), "pod %s is Ready", p.Name)
	}

	t.Run("Pod Security restricted is enforced in its namespace", func(t *testing.T) {
		var ns corev1.Namespace
		require.NoError(t, b.n.Client.Get(ctx, client.ObjectKey{Name: webhookNS}, &ns))
		assert.Equal(t, "restricted", ns.Labels["pod-security.kubernetes.io/enforce"])
		_, err := runKubectl(b.n.Kubeconfig, []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"root","namespace":"`+webhookNS+`"},
"spec":{"containers":[{"name":"c","image":"`+node.PauseImage+`"}]}}`), "create", "--dry-run=server", "-f", "-")
		require.Error(t, err, "a pod that is not restricted is admitted")
		assert.Contains(t, err.Error(), "violates PodSecurity")
	})

	t.Run("the container runs as uid 65532 on a read-only root without capabilities", func(t *testing.T) {
		for _, p := range pods {
			require.NotEmpty(t, p.Status.ContainerStatuses)
			pid, err := b.n.ContainerPID(ctx, p.Status.ContainerStatuses[0].ContainerID)
			require.NoError(t, err)
			status := procFields(t, pid)
			assert.Equal(t, strings.Repeat(webhookUID+"\t", 3)+webhookUID, status["Uid"], "%s: real, effective, saved and fs uid", p.Name)
			assert.Equal(t, strings.Repeat(webhookUID+"\t", 3)+webhookUID, status["Gid"], p.Name)
			assert.Equal(t, "0000000000000000", status["CapEff"], "%s: no effective capability", p.Name)
			assert.Equal(t, "1", status["NoNewPrivs"], p.Name)
			assert.Equal(t, "2", status["Seccomp"], "%s: seccomp filter (RuntimeDefault)", p.Name)
			root := rootMount(t, pid)
			assert.Contains(t, strings.Split(root, ","), "ro", "%s: the root file system is mounted %s", p.Name, root)
		}
	})

	t.Run("the pods' certificate is trusted through the caBundle they patched", func(t *testing.T) {
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		require.Eventually(t, func() bool {
			if b.n.Client.Get(ctx, client.ObjectKey{Name: in.mwc}, &mwc) != nil {
				return false
			}
			for _, p := range pods {
				if b.dialPod(p, mwc.Webhooks[0].ClientConfig.CABundle, in.service) != nil {
					return false
				}
			}
			return true
		}, time.Minute, time.Second, "every pod serves a certificate the caBundle trusts, for the Service's name")
		var sec corev1.Secret
		require.NoError(t, b.n.Client.Get(ctx, client.ObjectKey{Namespace: webhookNS, Name: in.tlsSecret}, &sec))
		assert.Equal(t, string(sec.Data["ca.crt"]), string(mwc.Webhooks[0].ClientConfig.CABundle), "the caBundle is the Secret's CA")
	})

	t.Run("a Secret created with kubectl is stored decrypted", func(t *testing.T) {
		b.createDecrypted(t, "kubectl-"+in.name, b.doc, b.plain)
	})

	t.Run("a forged review from a pod's neighbour gets no answer", func(t *testing.T) {
		b.forged(t, in)
	})
}

// forged posts a forged review of the installation's document straight to
// each pod, as any host that reaches the pod network could: without a
// client certificate it gets no answer; with the API server's it gets the
// plaintext, so the refusal is the certificate's doing.
func (b *podsBed) forged(t *testing.T, in installation) {
	review := forgedReview(t, "app.env", b.doc)
	want := base64.StdEncoding.EncodeToString(b.plain)
	for name, c := range b.podClients(t, in) {
		r, err := flood.SendReview(context.Background(), c.client, c.url, review)
		require.NoError(t, err, name)
		assert.Contains(t, string(r.Patch), want, "%s: the API server's certificate is answered", name)
		anon := c.client.Transport.(*http.Transport).TLSClientConfig.Clone()
		anon.Certificates = nil
		r, err = flood.SendReview(context.Background(), &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: anon}}, c.url, review)
		assert.Error(t, err, "%s: a caller without a client certificate got an answer", name)
		assert.Empty(t, r.Patch, name)
	}
}

// createDecrypted creates a Secret holding doc with kubectl in the
// opted-in namespace and checks it is stored as plain.
func (b *podsBed) createDecrypted(t *testing.T, name string, doc, plain []byte) {
	t.Helper()
	file := filepath.Join(b.work, name+".env")
	require.NoError(t, os.WriteFile(file, doc, 0o600))
	b.kubectl(t, nil, "-n", "apps", "create", "secret", "generic", name, "--from-file=app.env="+file)
	var got corev1.Secret
	require.NoError(t, b.n.Client.Get(context.Background(), client.ObjectKey{Namespace: "apps", Name: name}, &got))
	assert.Equal(t, string(plain), string(got.Data["app.env"]))
}

// dialPod opens TLS to a pod's webhook port as the API server does:
// trusting caBundle, for the Service's DNS name.
func (b *podsBed) dialPod(p corev1.Pod, caBundle []byte, service string) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caBundle) {
		return fmt.Errorf("no certificate in the caBundle")
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", net.JoinHostPort(p.Status.PodIP, "9443"),
		&tls.Config{RootCAs: pool, ServerName: service + "." + webhookNS + ".svc", MinVersion: tls.VersionTLS12})
	if err != nil {
		return err
	}
	return conn.Close()
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// procFields reads /proc/pid/status.
func procFields(t *testing.T, pid int) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	out := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// rootMount returns the mount options of the root file system pid sees.
func rootMount(t *testing.T, pid int) string {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(raw), "\n") {
		// id parent major:minor root mountpoint options ...
		if f := strings.Fields(line); len(f) > 5 && f[4] == "/" {
			return f[5]
		}
	}
	t.Fatalf("no root mount for pid %d", pid)
	return ""
}

// restarts sums the restart counts of the installation's pods and lists
// any container that was OOM-killed.
func (b *podsBed) restarts(t *testing.T, in installation) (int32, []string) {
	t.Helper()
	var n int32
	var oom []string
	for _, p := range b.pods(t, in) {
		for _, c := range p.Status.ContainerStatuses {
			n += c.RestartCount
			if term := c.LastTerminationState.Terminated; term != nil && term.Reason == "OOMKilled" {
				oom = append(oom, p.Name)
			}
		}
	}
	return n, oom
}

var kustomizeInstall = installation{
	name:       "kustomize",
	deployment: "sops-webhook", service: "sops-webhook", mwc: "sops-webhook", tlsSecret: "sops-webhook-tls",
	selector: map[string]string{"app.kubernetes.io/name": "sops-webhook"},
}

func (b *podsBed) kustomizeSelfManaged(t *testing.T) {
	in := kustomizeInstall
	b.prepareNamespace(t)
	dir := b.overlay(t, "manifests/overlays/self-managed")
	b.kubectl(t, nil, "apply", "-k", dir)
	b.checkInstall(t, in)
	var keys corev1.Secret
	require.NoError(t, b.n.Client.Get(context.Background(), client.ObjectKey{Namespace: webhookNS, Name: "sops-webhook-keys"}, &keys))
	assert.Contains(t, keys.Data, "default.agekey", "applying the base's empty keys Secret kept the key")

	t.Run("rollout restart under writers loses no write", func(t *testing.T) {
		before := podNames(b.pods(t, in))
		st := startStream(b.n.Client, "apps", "rollout", b.doc, 4)
		time.Sleep(2 * time.Second)
		b.kubectl(t, nil, "-n", webhookNS, "rollout", "restart", "deploy/"+in.deployment)
		b.rolledOut(t, in)
		b.noWriteLost(t, st, "rollout restart")
		for _, p := range podNames(b.pods(t, in)) {
			assert.NotContains(t, before, p, "the pods were replaced")
		}
	})

	t.Run("a pod deleted under writers loses no write", func(t *testing.T) {
		pods := b.pods(t, in)
		require.Len(t, pods, 2)
		st := startStream(b.n.Client, "apps", "podkill", b.doc, 4)
		time.Sleep(2 * time.Second)
		b.kubectl(t, nil, "-n", webhookNS, "delete", "pod", pods[0].Name, "--wait=false")
		b.kubectl(t, nil, "-n", webhookNS, "wait", "--for=delete", "pod/"+pods[0].Name, "--timeout=2m")
		b.rolledOut(t, in)
		require.Eventually(t, func() bool {
			ready := 0
			for _, p := range b.pods(t, in) {
				if podReady(&p) {
					ready++
				}
			}
			return ready == 2
		}, 2*time.Minute, time.Second, "a replacement pod becomes Ready")
		b.noWriteLost(t, st, "pod deletion")
	})

	t.Run("a key added through the mounted ConfigMap works without a restart", func(t *testing.T) {
		b.configReload(t, in)
	})

	t.Run("a flood leaves the containers running under their memory limit", func(t *testing.T) {
		b.flood(t, in)
	})

	t.Run("a generated key: two replicas starting together make one identity, and publish it", func(t *testing.T) {
		b.generatedKey(t, in)
	})

	b.kubectl(t, nil, "delete", "-k", dir, "--wait", "--timeout=3m")
	b.gone(t, in)
}

// noWriteLost lets the writers of st run two more seconds, stops them, and
// checks that every write during what succeeded and is stored decrypted.
func (b *podsBed) noWriteLost(t *testing.T, st *stream, what string) {
	t.Helper()
	time.Sleep(2 * time.Second)
	st.finishNoneLost(t, what, b.plain)
}

func podNames(pods []corev1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	return out
}

// gone checks nothing of the installation is left.
func (b *podsBed) gone(t *testing.T, in installation) {
	t.Helper()
	err := b.n.Client.Get(context.Background(), client.ObjectKey{Name: in.mwc}, &admissionregistrationv1.MutatingWebhookConfiguration{})
	assert.True(t, apierrors.IsNotFound(err), "the webhook is still registered: %v", err)
	require.Eventually(t, func() bool { return len(b.pods(t, in)) == 0 }, 2*time.Minute, time.Second, "pods are left")
}

// configReload adds a hand-made key: its file to the keys Secret and its
// entry to the config, as an operator edits them, and waits until each pod
// decrypts a document only that key opens, then checks no pod restarted.
func (b *podsBed) configReload(t *testing.T, in installation) {
	ctx := context.Background()
	before := podNames(b.pods(t, in))
	// The hand-made key: in the keys Secret since the install, in the
	// config from now on (the flood after this uses it too).
	second := b.key
	plain := []byte("PASSWORD=second-key-PLAINTEXT\n")
	doc := sopskit.SopsEncrypt(t, plain, "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{second}})
	fd := flood.FloodDoc{File: "app.env", Enc: doc, Plain: plain}
	review := flood.SecretReview("reload", fd)
	clients := b.podClients(t, in)
	for pod, c := range clients {
		r, err := flood.SendReview(ctx, c.client, c.url, review)
		require.NoError(t, err)
		require.EqualValues(t, http.StatusForbidden, r.Code, "%s: before the change, the second key is unknown: %s", pod, r.Message)
	}

	keys := b.kubectl(t, nil, "-n", webhookNS, "create", "secret", "generic", "sops-webhook-keys",
		"--from-file=default.agekey="+b.key.IdentityFile, "--from-file=second.agekey="+second.IdentityFile, "--dry-run=client", "-o", "yaml")
	b.kubectl(t, []byte(keys), "apply", "-f", "-")
	var cm corev1.ConfigMap
	require.NoError(t, b.n.Client.Get(ctx, client.ObjectKey{Namespace: webhookNS, Name: "sops-webhook-config"}, &cm))
	config := cm.Data["config.yaml"]
	require.Contains(t, config, "keys:\n")
	cm.Data["config.yaml"] = strings.Replace(config, "keys:\n", "keys:\n  - name: second\n    age: {identityFile: /etc/sops-webhook/keys/second.agekey}\n", 1)
	require.NoError(t, b.n.Client.Update(ctx, &cm))
	changed := time.Now()

	for pod, c := range clients {
		require.Eventually(t, func() bool {
			r, err := flood.SendReview(ctx, c.client, c.url, review)
			return err == nil && fd.Check(r) == nil
		}, 3*time.Minute, time.Second, "%s never decrypted with the new key", pod)
	}
	t.Logf("both pods decrypt with the new key %s after the ConfigMap and Secret changed", time.Since(changed).Round(time.Second))
	b.createDecrypted(t, "second-key", doc, plain)
	assert.ElementsMatch(t, before, podNames(b.pods(t, in)), "the pods were not replaced")
	restarts, _ := b.restarts(t, in)
	assert.Zero(t, restarts, "no container restarted")
}

// generatedKey adds a generated key to the installation's config, as an
// operator does, then, twice, scales the Deployment to zero, deletes the
// keys' Secret and scales back to two: both replicas start together, with
// the shipped RBAC and confinement, and exactly one identity exists, which
// both use (each, asked directly, opens a document for it) and publish; a
// document encrypted for the published recipient is stored decrypted.
func (b *podsBed) generatedKey(t *testing.T, in installation) {
	ctx := context.Background()
	var cm corev1.ConfigMap
	require.NoError(t, b.n.Client.Get(ctx, client.ObjectKey{Namespace: webhookNS, Name: "sops-webhook-config"}, &cm))
	cm.Data["config.yaml"] = strings.Replace(cm.Data["config.yaml"], "keys:\n", "keys:\n  - name: cluster\n    generate: {}\n", 1)
	require.NoError(t, b.n.Client.Update(ctx, &cm))
	kube, err := kubernetes.NewForConfig(b.n.Config)
	require.NoError(t, err)
	store := &clusterkeys.Store{Secrets: kube.CoreV1().Secrets(webhookNS), Name: clusterkeys.DefaultSecretName}
	require.Eventually(t, func() bool {
		keys, err := store.Read(ctx)
		return err == nil && keys.Key("cluster") != nil
	}, 3*time.Minute, time.Second, "the running replicas generate the key after the config changed")

	for round := range 2 {
		b.kubectl(t, nil, "-n", webhookNS, "scale", "deploy/"+in.deployment, "--replicas=0")
		require.Eventually(t, func() bool { return len(b.pods(t, in)) == 0 }, 3*time.Minute, time.Second)
		require.NoError(t, kube.CoreV1().Secrets(webhookNS).Delete(ctx, clusterkeys.DefaultSecretName, metav1.DeleteOptions{}))
		b.kubectl(t, nil, "-n", webhookNS, "scale", "deploy/"+in.deployment, "--replicas=2")
		b.rolledOut(t, in)
		keys, err := store.Read(ctx)
		require.NoError(t, err)
		key := keys.Key("cluster")
		require.NotNil(t, key, "round %d", round)
		require.Len(t, key.Generations, 1, "round %d: one generation", round)
		recipient := key.Generations[0].Recipient
		plain := []byte(fmt.Sprintf("PASSWORD=generated-PLAINTEXT-%d\n", round))
		doc := sopskit.SopsEncrypt(t, plain, "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: recipient}}})
		// Each replica, asked directly, opens a document for that identity.
		fd := flood.FloodDoc{File: "app.env", Enc: doc, Plain: plain}
		clients := b.podClients(t, in)
		require.Len(t, clients, 2)
		for pod, c := range clients {
			r, err := flood.SendReview(ctx, c.client, c.url, flood.SecretReview("generated", fd))
			require.NoError(t, err)
			assert.NoError(t, fd.Check(r), "round %d: pod %s uses the one identity", round, pod)
		}
		var published corev1.ConfigMap
		require.Eventually(t, func() bool {
			err := b.n.Client.Get(ctx, client.ObjectKey{Namespace: webhookNS, Name: clusterkeys.DefaultConfigMapName}, &published)
			return err == nil && strings.Contains(published.Data[clusterkeys.RecipientsEntry], recipient)
		}, time.Minute, time.Second, "round %d: the recipient is published", round)
		b.createDecrypted(t, fmt.Sprintf("generated-key-%d", round), doc, plain)
	}
}

type podClient struct {
	url    string
	client *http.Client
}

// podClients returns, for each pod, its /mutate URL and an HTTPS client that
// trusts the caBundle and names the Service, as the API server does.
func (b *podsBed) podClients(t *testing.T, in installation) map[string]podClient {
	t.Helper()
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	require.NoError(t, b.n.Client.Get(context.Background(), client.ObjectKey{Name: in.mwc}, &mwc))
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(mwc.Webhooks[0].ClientConfig.CABundle))
	out := map[string]podClient{}
	for _, p := range b.pods(t, in) {
		out[p.Name] = podClient{
			url: "https://" + net.JoinHostPort(p.Status.PodIP, "9443") + "/mutate",
			client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
				RootCAs: pool, ServerName: in.service + "." + webhookNS + ".svc", MinVersion: tls.VersionTLS12,
				Certificates: apiServerTLS(t, nil).Certificates,
			}}},
		}
	}
	return out
}

// flood sends the load-safety flood (TestFlood's payloads) to both pods at
// once, then checks every valid document was decrypted, no pod restarted
// or was OOM-killed, and reports each container's memory peak against its
// limit.
func (b *podsBed) flood(t *testing.T, in installation) {
	ctx := context.Background()
	other := sopskit.NewAgeKey(t, false)
	mine := sopskit.Recipients{Age: []sopskit.AgeKey{b.key}} // configured by configReload
	start := time.Now()
	payloads := flood.NewFloodPayloads(t, mine, sopskit.Recipients{Age: []sopskit.AgeKey{other}}, floodHeavySenders, floodDocsPerSender)
	t.Logf("payloads encrypted with the sops CLI in %s", time.Since(start).Round(time.Second))
	clients := b.podClients(t, in)
	results := map[string]flood.FloodResult{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for pod, c := range clients {
		wg.Go(func() {
			res := flood.Flood{URL: c.url, Client: func() *http.Client { return c.client }, Payloads: payloads,
				BusyRetries: floodBusyRetries, DeniedSends: floodDeniedSends}.Run(ctx, nil)
			mu.Lock()
			results[pod] = res
			mu.Unlock()
		})
	}
	wg.Wait()
	for pod, res := range results {
		t.Logf("flood of %s: %s: %v", pod, res.Took.Round(time.Millisecond), res.Tally)
		assert.Empty(t, res.Failures, pod)
		assert.Equal(t, payloads.Valid(), res.Tally[flood.FloodDecrypted], "%s: every valid document is decrypted in the end", pod)
	}
	restarts, oom := b.restarts(t, in)
	assert.Zero(t, restarts, "no container restarted")
	assert.Empty(t, oom, "OOM-killed containers")
	for _, p := range b.pods(t, in) {
		require.True(t, podReady(&p), "%s is Ready after the flood", p.Name)
		pid, err := b.n.ContainerPID(ctx, p.Status.ContainerStatuses[0].ContainerID)
		require.NoError(t, err)
		limit, peak := memoryCgroup(t, pid)
		assert.Equal(t, int64(floodLimit), limit, "%s: the container's memory limit is the Deployment's", p.Name)
		t.Logf("%s: memory peak %.1f MiB of its %.0f MiB limit", p.Name, float64(peak)/(1<<20), float64(limit)/(1<<20))
	}
}

// memoryCgroup reads the memory limit and peak usage of pid's cgroup (v1
// or v2).
func memoryCgroup(t *testing.T, pid int) (limit, peak int64) {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	require.NoError(t, err)
	read := func(p string) int64 {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		require.NoError(t, err, p)
		return v
	}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		switch {
		case f[0] == "0" && f[1] == "":
			dir := filepath.Join("/sys/fs/cgroup", f[2])
			if _, err := os.Stat(filepath.Join(dir, "memory.max")); err == nil {
				return read(filepath.Join(dir, "memory.max")), read(filepath.Join(dir, "memory.peak"))
			}
		case strings.Contains(","+f[1]+",", ",memory,"):
			dir := filepath.Join("/sys/fs/cgroup/memory", f[2])
			return read(filepath.Join(dir, "memory.limit_in_bytes")), read(filepath.Join(dir, "memory.max_usage_in_bytes"))
		}
	}
	t.Fatalf("no memory cgroup for pid %d", pid)
	return 0, 0
}

func (b *podsBed) chart(t *testing.T) {
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	chartInstall := installation{deployment: "sw-sops-webhook", service: "sw-sops-webhook", mwc: "sw-sops-webhook", tlsSecret: "sw-sops-webhook-tls", recipients: "sw-sops-webhook-recipients",
		selector: map[string]string{"app.kubernetes.io/name": "sops-webhook", "app.kubernetes.io/instance": "sw"}}
	for _, h := range testbed.HelmCLIs(t, b.n.Kubeconfig) {
		t.Run(h.Name, func(t *testing.T) {
			in := chartInstall
			in.name = h.Name
			b.prepareNamespace(t)
			h.MustRun(t, "install", "sw", filepath.Join(root, "charts/sops-webhook"), "-n", webhookNS,
				"--set", "certificates.mode=self-managed", "--set", "callerAuth.mode=clientCertificate", "--set-file", "callerAuth.clientCertificate.caBundle="+clientCAFile(t),
				"--set", "image.repository="+podsImageName, "--set", "image.tag="+podsImageTag)
			b.checkInstall(t, in)
			h.MustRun(t, "uninstall", "sw", "-n", webhookNS, "--wait", "--timeout=3m")
			b.gone(t, in)
			var left corev1.SecretList
			require.NoError(t, b.n.Client.List(context.Background(), &left, client.InNamespace(webhookNS)))
			var names []string
			for _, s := range left.Items {
				names = append(names, s.Name)
			}
			assert.ElementsMatch(t, []string{"sops-webhook-keys", in.tlsSecret, "sw-sops-webhook-generated-keys"}, names,
				"left after uninstall, as docs/operations.md says: the keys (hand-made and generated) and the certificate the pods created")
			b.deleteNamespace(t)
		})
	}
}

func (b *podsBed) certManager(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tools, err := sopskit.Load()
	require.NoError(t, err)
	require.NotEmpty(t, tools.CRDDirs, "run make testbed: CRDs missing")
	for _, dir := range tools.CRDDirs {
		b.kubectl(t, nil, "apply", "--server-side", "-f", dir)
	}
	cm, err := testbed.NewCertManagerStandIn(b.n.Config)
	require.NoError(t, err)
	standIn := make(chan error, 1)
	go func() { standIn <- cm.Run(ctx) }()

	b.prepareNamespace(t)
	dir := b.overlay(t, "manifests/overlays/cert-manager")
	b.kubectl(t, nil, "apply", "-k", dir)
	in := kustomizeInstall
	in.name = "cert-manager"
	b.checkInstall(t, in)
	var sec corev1.Secret
	require.NoError(t, b.n.Client.Get(ctx, client.ObjectKey{Namespace: webhookNS, Name: kustomizeInstall.tlsSecret}, &sec))
	assert.Equal(t, "sops-webhook", sec.Annotations["cert-manager.io/certificate-name"], "the Secret is the stand-in's, issued for the Certificate")
	var dep appsv1.Deployment
	require.NoError(t, b.n.Client.Get(ctx, client.ObjectKey{Namespace: webhookNS, Name: kustomizeInstall.deployment}, &dep))
	raw, err := json.Marshal(dep.Spec.Template.Spec.Volumes)
	require.NoError(t, err)
	assert.Contains(t, string(raw), `"secretName":"sops-webhook-tls"`, "the pods serve the Secret cert-manager issues")

	b.kubectl(t, nil, "delete", "-k", dir, "--wait", "--timeout=3m")
	b.gone(t, kustomizeInstall)
	cancel()
	assert.NoError(t, <-standIn, "the cert-manager stand-in's last reconcile")
}
