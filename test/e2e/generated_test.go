package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// generatedConfig generates two keys beside a hand-made one; the policy
// grants cluster and the hand-made one to apps, pq to team-b. cluster's
// generations are backed up for breakGlass. rotateEvery, if set, is cluster's rotation period.
func generatedConfig(handmade sopskit.AgeKey, rotateEvery, breakGlass string) string {
	generate := "{breakGlass: [" + breakGlass + "]}"
	if rotateEvery != "" {
		generate = "{rotateEvery: " + rotateEvery + ", breakGlass: [" + breakGlass + "]}"
	}
	return `apiVersion: sops-webhook.io/v1alpha1
kind: Config
keys:
  - name: cluster
    generate: ` + generate + `
  - name: pq
    generate: {type: hybrid}
  - name: handmade
    age: {identityFile: ` + handmade.IdentityFile + `}
policy:
  - keys: [cluster, handmade]
    namespaces: [apps]
    kinds: [Secret, ConfigMap]
  - keys: [pq]
    namespaces: [team-b]
    kinds: [Secret, ConfigMap]
  - keys: [cluster]
    namespaces: [guarded]
    requireRBAC: true
`
}

// encTokens matches the encrypted values and the MAC of a document.
var encTokens = regexp.MustCompile(`ENC\[AES256_GCM,data:[^\]]*\]`)

// generatedBed is the identity bed with the shipped RBAC and confinement
// applied, and webhooks that run as the webhook's service account.
type generatedBed struct {
	*identityBed
	admin, kubeconfig string
	handmade          sopskit.AgeKey
	// breakGlass is the identity, kept offline, of cluster's backups.
	breakGlass sopskit.AgeKey
	// rotateEvery is cluster's rotation period in the webhooks started.
	rotateEvery string
	// started are every webhook started, for their logs.
	started []*testbed.Webhook
	mu      sync.Mutex
}

// TestGeneratedKeys: the webhook generates its keys in the cluster, as its
// own service account with only the shipped RBAC, and publishes their
// recipients. Replicas that start together make one identity; any
// authenticated user reads the recipients and nobody but the webhook the
// keys; the published .sops.yaml and the real sops and helm CLIs round-trip;
// a generation change reaches running replicas; no private key shows
// anywhere but the Secret.
func TestGeneratedKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	b := &generatedBed{identityBed: newIdentityBed(ctx, t), handmade: sopskit.NewAgeKey(t, false), breakGlass: sopskit.NewAgeKey(t, false)}
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	b.admin = filepath.Join(b.work, "admin.kubeconfig")
	require.NoError(t, b.cp.WriteKubeconfig(b.admin))
	for _, f := range []string{"manifests/base/rbac.yaml", "manifests/base/confine.yaml"} {
		_, err := runKubectl(b.admin, nil, "apply", "-f", filepath.Join(root, f))
		require.NoError(t, err)
	}
	for _, ns := range []string{"team-b", "guarded"} {
		require.NoError(t, b.cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{mutate.LabelDecrypt: "enabled"}}}))
	}
	b.kubeconfig = b.kubeconfigFor(ctx, t, "sops-webhook")
	// The confinement policy takes effect asynchronously: wait until the
	// webhook's identity is refused another Secret.
	as := b.impersonate(t, "system:serviceaccount:sops-webhook:sops-webhook", "system:serviceaccounts", "system:serviceaccounts:sops-webhook")
	require.Eventually(t, func() bool {
		err := as.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "sops-webhook", Name: "planted"}})
		return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "sops-webhook-confine")
	}, time.Minute, 200*time.Millisecond)

	t.Run("replicas starting together agree on one identity", b.replicasAgree)
	wh := b.start(ctx, t, "published")
	b.point(ctx, t, wh)
	t.Run("recipients are published for every user and the keys for none", func(t *testing.T) { b.published(ctx, t) })
	t.Run("recipients then the sops CLI then helm install round-trip", func(t *testing.T) { b.roundTrip(ctx, t) })
	t.Run("a new generation reaches running replicas and a retired one stops decrypting", func(t *testing.T) { b.newGeneration(ctx, t, wh) })
	require.NoError(t, wh.Stop())
	b.rotateEvery = "3s"
	wh = b.start(ctx, t, "rotating")
	b.point(ctx, t, wh)
	t.Run("rotation on schedule makes a new generation current and the one before still decrypts", func(t *testing.T) { b.rotation(ctx, t) })
	// The generation before stays active; no more rotations from here.
	require.NoError(t, wh.Stop())
	b.rotateEvery = "0s"
	wh = b.start(ctx, t, "steady")
	b.point(ctx, t, wh)
	t.Run("rewrap through admission moves a file to the current generation", func(t *testing.T) { b.rewrap(ctx, t, wh) })
	t.Run("the kubectl plugin against the test bed", func(t *testing.T) { b.plugin(ctx, t, wh) })
	t.Run("a backup restores into a fresh control plane", func(t *testing.T) { b.restore(ctx, t) })
	t.Run("no private key outside its Secret", func(t *testing.T) { b.noPrivateKeyLeaks(ctx, t, wh) })
}

// start runs a webhook with the generated keys' config as the webhook's
// service account, checking its config every 200 ms.
func (b *generatedBed) start(ctx context.Context, t *testing.T, name string) *testbed.Webhook {
	t.Helper()
	dir := filepath.Join(b.work, name)
	require.NoError(t, os.MkdirAll(dir, 0o700))
	path := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte(generatedConfig(b.handmade, b.rotateEvery, b.breakGlass.Recipient)), 0o600))
	wh, err := testbed.StartWebhookWith(ctx, b.bin, testbed.WebhookOptions{
		Config: path, WorkDir: dir, Log: verbose(),
		Args: []string{"--log-level", "debug", "--kubeconfig", b.kubeconfig, "--namespace", "sops-webhook", "--config-check-interval", "200ms"},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wh.Stop() })
	b.mu.Lock()
	defer b.mu.Unlock()
	b.started = append(b.started, wh)
	return wh
}

// keysSecret reads the generated keys' Secret as the admin.
func (b *generatedBed) keysSecret(ctx context.Context, t *testing.T) *clusterkeys.Keys {
	t.Helper()
	s := &clusterkeys.Store{Secrets: b.kube.CoreV1().Secrets("sops-webhook"), Name: clusterkeys.DefaultSecretName}
	keys, err := s.Read(ctx)
	require.NoError(t, err)
	return keys
}

// impersonate returns a client acting as user in groups (and
// system:authenticated), as kubectl --as does.
func (b *generatedBed) impersonate(t *testing.T, user string, groups ...string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(b.cp.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append(groups, "system:authenticated")}
	c, err := client.New(cfg, client.Options{})
	require.NoError(t, err)
	return c
}

// replicasAgree starts two webhooks at once, three times over, each time
// from no Secret, and many in-process Syncs at once, ten times over: each
// time exactly one generation of each key exists, and every replica uses
// it.
func (b *generatedBed) replicasAgree(t *testing.T) {
	ctx := context.Background()
	if b.bin == "" {
		var err error
		b.bin, err = testbed.BuildWebhook(b.work)
		require.NoError(t, err)
	}
	secrets := b.kube.CoreV1().Secrets("sops-webhook")
	for round := range 3 {
		err := secrets.Delete(ctx, clusterkeys.DefaultSecretName, metav1.DeleteOptions{})
		require.True(t, err == nil || apierrors.IsNotFound(err), "%v", err)
		var (
			wg       sync.WaitGroup
			replicas [2]*testbed.Webhook
		)
		for i := range replicas {
			wg.Go(func() {
				replicas[i] = b.start(ctx, t, filepath.Join("race", string(rune('a'+round)), string(rune('a'+i))))
			})
		}
		wg.Wait()
		keys := b.keysSecret(ctx, t)
		require.Len(t, keys.Keys, 2, "round %d", round)
		for _, k := range keys.Keys {
			require.Len(t, k.Generations, 1, "round %d: key %s", round, k.Name)
			for _, wh := range replicas {
				assert.True(t, strings.Contains(wh.Logs(), "1 current "+k.Generations[0].Recipient), "round %d: key %s: a replica does not use the one generation", round, k.Name)
			}
		}
		for _, wh := range replicas {
			require.NoError(t, wh.Stop())
		}
	}

	// Many replicas at once, in-process, through the same API server.
	kube, err := kubernetes.NewForConfig(b.cp.Config)
	require.NoError(t, err)
	for round := range 10 {
		name := "race-" + string(rune('a'+round))
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			seen  = map[string]int{}
			specs = []clusterkeys.Spec{{Name: "one"}, {Name: "two", Type: clusterkeys.Hybrid}}
		)
		for range 8 {
			wg.Go(func() {
				s := &clusterkeys.Store{Secrets: kube.CoreV1().Secrets("sops-webhook"), Name: name}
				keys, err := s.Sync(ctx, specs)
				if !assert.NoError(t, err) {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, k := range keys.Keys {
					seen[k.Name+" "+k.Generations[0].Recipient]++
				}
			})
		}
		wg.Wait()
		assert.Len(t, seen, 2, "round %d: every Sync returned the same two identities: %v", round, seen)
		require.NoError(t, kube.CoreV1().Secrets("sops-webhook").Delete(ctx, name, metav1.DeleteOptions{}))
	}
}

// published reads the recipients ConfigMap as an unprivileged user, and is
// refused the keys' Secret.
func (b *generatedBed) published(ctx context.Context, t *testing.T) {
	jane := b.impersonate(t, "jane")
	cm := &corev1.ConfigMap{}
	require.Eventually(t, func() bool {
		return jane.Get(ctx, client.ObjectKey{Namespace: "sops-webhook", Name: clusterkeys.DefaultConfigMapName}, cm) == nil
	}, 30*time.Second, 100*time.Millisecond, "an authenticated user reads the recipients")
	err := jane.Get(ctx, client.ObjectKey{Namespace: "sops-webhook", Name: clusterkeys.DefaultSecretName}, &corev1.Secret{})
	assert.True(t, apierrors.IsForbidden(err), "an authenticated user reads the keys: %v", err)
	err = jane.List(ctx, &corev1.SecretList{}, client.InNamespace("sops-webhook"))
	assert.True(t, apierrors.IsForbidden(err), "an authenticated user lists the keys: %v", err)

	keys := b.keysSecret(ctx, t)
	var pub clusterkeys.Recipients
	require.NoError(t, yaml.Unmarshal([]byte(cm.Data[clusterkeys.RecipientsEntry]), &pub))
	require.Len(t, pub.Keys, 3)
	byName := map[string]clusterkeys.PublishedKey{}
	for _, k := range pub.Keys {
		byName[k.Name] = k
	}
	assert.Equal(t, keys.Key("cluster").Generations, byName["cluster"].Generations)
	assert.Equal(t, keys.Key("pq").Generations, byName["pq"].Generations)
	assert.True(t, strings.HasPrefix(byName["pq"].Generations[0].Recipient, "age1pq1"), "hybrid")
	assert.Equal(t, []string{b.handmade.Recipient}, byName["handmade"].Age)
	assert.Equal(t, []clusterkeys.Grant{{Namespaces: []string{"team-b"}, Kinds: []string{"Secret", "ConfigMap"}}}, byName["pq"].Grants)
	assert.Contains(t, cm.Data[clusterkeys.SopsConfigEntry], "path_regex: (^|/)apps/\n    age: "+keys.Key("cluster").Generations[0].Recipient+","+b.handmade.Recipient+"\n")
}

// recipientsOf returns the published ConfigMap's recipients of key.
func (b *generatedBed) recipientsOf(ctx context.Context, t *testing.T, key string) (clusterkeys.PublishedKey, *corev1.ConfigMap) {
	t.Helper()
	cm := &corev1.ConfigMap{}
	require.NoError(t, b.cp.Client.Get(ctx, client.ObjectKey{Namespace: "sops-webhook", Name: clusterkeys.DefaultConfigMapName}, cm))
	var pub clusterkeys.Recipients
	require.NoError(t, yaml.Unmarshal([]byte(cm.Data[clusterkeys.RecipientsEntry]), &pub))
	for _, k := range pub.Keys {
		if k.Name == key {
			return k, cm
		}
	}
	t.Fatalf("key %s is not published", key)
	return clusterkeys.PublishedKey{}, nil
}

// sopsWithConfig encrypts plaintext as the file rel (a path under a
// folder named after the namespace) with the real sops CLI and the
// published .sops.yaml, as a chart author would.
func sopsWithConfig(t *testing.T, sopsYAML, rel string, plaintext []byte) []byte {
	t.Helper()
	tools := sopskit.Need(t, "the sops CLI", func(t sopskit.Tools) string { return t.Sops })
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".sops.yaml"), []byte(sopsYAML), 0o600))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, filepath.Dir(rel)), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, rel), plaintext, 0o600))
	cmd := exec.Command(tools.Sops, "encrypt", "--in-place", rel)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	enc, err := os.ReadFile(filepath.Join(dir, rel))
	require.NoError(t, err)
	return enc
}

// roundTrip: the published recipient and rules, the sops CLI, then a
// plain helm install of the example chart in apps: stored decrypted, and
// the keys annotation names the generation.
func (b *generatedBed) roundTrip(ctx context.Context, t *testing.T) {
	cluster, cm := b.recipientsOf(ctx, t, "cluster")
	marker := "PLAINTEXT-generated-"
	example := func(path string) []byte {
		root, err := sopskit.RepoRoot()
		require.NoError(t, err)
		raw, err := os.ReadFile(filepath.Join(root, path))
		require.NoError(t, err)
		return []byte(strings.ReplaceAll(string(raw), "change-me-", marker))
	}
	// The chart's dotenv file, for the recipient that `recipients` prints.
	chartRoot := t.TempDir()
	require.NoError(t, testbed.CopyFromRepo(chartRoot, "examples/webapp", "charts/sops-webhook-values"))
	chart := filepath.Join(chartRoot, "examples", "webapp")
	env := sopskit.SopsEncrypt(t, example("examples/webapp/files/app.env.example"), "dotenv",
		sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: cluster.Generations[0].Recipient}}})
	require.NoError(t, os.WriteFile(filepath.Join(chart, "files", "app.enc.env"), env, 0o644))
	// The values file, by the published .sops.yaml.
	values := sopsWithConfig(t, cm.Data[clusterkeys.SopsConfigEntry], "apps/secrets.enc.yaml", example("examples/webapp/secrets.example.yaml"))
	valuesFile := filepath.Join(t.TempDir(), "secrets.enc.yaml")
	require.NoError(t, os.WriteFile(valuesFile, values, 0o600))

	h := testbed.HelmCLIs(t, b.admin)[0]
	h.MustRun(t, "dependency", "update", chart)
	h.MustRun(t, "install", "webapp", chart, "-n", "apps", "-f", valuesFile)
	creds := &corev1.Secret{}
	require.NoError(t, b.cp.Client.Get(ctx, client.ObjectKey{Namespace: "apps", Name: "webapp-credentials"}, creds))
	assert.Equal(t, marker+"db-password", string(creds.Data["db-password"]))
	assert.Equal(t, "cluster@1", creds.Annotations[mutate.AnnotationKeys], "the generation that opened it")
	envSecret := &corev1.Secret{}
	require.NoError(t, b.cp.Client.Get(ctx, client.ObjectKey{Namespace: "apps", Name: "webapp-env"}, envSecret))
	assert.NotContains(t, string(envSecret.Data["app.env"]), "ENC[")
	assert.Equal(t, "cluster@1", envSecret.Annotations[mutate.AnnotationKeys])
}

// newGeneration retires generation 1 of cluster, as an operator editing
// the Secret would: the running webhook makes generation 2 current,
// publishes it, decrypts for it, and denies what only generation 1 opens.
func (b *generatedBed) newGeneration(ctx context.Context, t *testing.T, wh *testbed.Webhook) {
	old, _ := b.recipientsOf(ctx, t, "cluster")
	before := sopskit.SopsEncrypt(t, []byte("k: PLAINTEXT-generated-old\n"), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: old.Generations[0].Recipient}}})
	secrets := b.kube.CoreV1().Secrets("sops-webhook")
	s, err := secrets.Get(ctx, clusterkeys.DefaultSecretName, metav1.GetOptions{})
	require.NoError(t, err)
	idx := string(s.Data["generations.json"])
	at := strings.Index(idx, old.Generations[0].Recipient)
	require.Positive(t, at)
	rest := strings.Replace(idx[at:], `"current"`, `"retired"`, 1)
	s.Data["generations.json"] = []byte(idx[:at] + rest)
	_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
	require.NoError(t, err)

	var now clusterkeys.PublishedKey
	require.Eventually(t, func() bool {
		now, _ = b.recipientsOf(ctx, t, "cluster")
		return len(now.Generations) == 2 && now.Generations[0].State == clusterkeys.StateCurrent
	}, 30*time.Second, 100*time.Millisecond, "generation 2 published")
	assert.Equal(t, clusterkeys.StateRetired, now.Generations[1].State)
	assert.Equal(t, old.Generations[0].Recipient, now.Generations[1].Recipient)

	after := sopskit.SopsEncrypt(t, []byte("k: PLAINTEXT-generated-new\n"), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: now.Generations[0].Recipient}}})
	require.Eventually(t, func() bool { return strings.Contains(wh.Logs(), "2 current "+now.Generations[0].Recipient) }, 30*time.Second, 100*time.Millisecond)
	require.NoError(t, b.create(ctx, "after-rotation", after))
	assert.Equal(t, "k: PLAINTEXT-generated-new\n", b.stored(ctx, t, "after-rotation"))
	err = b.create(ctx, "retired-generation", before)
	require.Error(t, err, "generation 1 is retired")
	assert.Contains(t, err.Error(), `it is encrypted only for a retired generation of a key; key "cluster" generation 1 is retired`)
	retired, err := wh.Metric(`sops_webhook_retired_generation_requests_total{generation="1",key="cluster"}`)
	require.NoError(t, err)
	assert.Equal(t, 1.0, retired)
}

// rotation runs beside a webhook that rotates cluster every 3 s: a new
// generation becomes current, the one that was current stays active and
// decrypts.
func (b *generatedBed) rotation(ctx context.Context, t *testing.T) {
	before, _ := b.recipientsOf(ctx, t, "cluster")
	was := before.Generations[0]
	require.Equal(t, clusterkeys.StateCurrent, was.State)
	doc := sopskit.SopsEncrypt(t, []byte("k: PLAINTEXT-generated-before-rotation\n"), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: was.Recipient}}})
	var now clusterkeys.PublishedKey
	require.Eventually(t, func() bool {
		now, _ = b.recipientsOf(ctx, t, "cluster")
		return now.Generations[0].Number > was.Number
	}, 30*time.Second, 100*time.Millisecond, "a new generation is published")
	assert.Equal(t, clusterkeys.StateCurrent, now.Generations[0].State)
	for _, g := range now.Generations {
		if g.Number == was.Number {
			assert.Equal(t, clusterkeys.StateActive, g.State, "the generation before stays active")
		}
	}
	require.NoError(t, b.create(ctx, "before-rotation", doc))
	assert.Equal(t, "k: PLAINTEXT-generated-before-rotation\n", b.stored(ctx, t, "before-rotation"))
	got := &corev1.Secret{}
	require.NoError(t, b.cp.Client.Get(ctx, client.ObjectKey{Namespace: "apps", Name: "before-rotation"}, got))
	assert.Equal(t, "cluster@"+strconv.Itoa(was.Number), got.Annotations[mutate.AnnotationKeys])
}

// rewrap asks, with a server-side dry run, for a file encrypted for an
// older generation to be rewrapped: the answer holds the same values and
// MAC, wrapped for the current generation too, and no plaintext; once the
// older generation is retired the rewrapped file still decrypts, and a
// drop-retired rewrap removes it. A rewrap is denied where the key is not
// granted, and requireRBAC applies to it.
func (b *generatedBed) rewrap(ctx context.Context, t *testing.T, wh *testbed.Webhook) {
	pub, _ := b.recipientsOf(ctx, t, "cluster")
	require.GreaterOrEqual(t, len(pub.Generations), 2)
	current := pub.Generations[0]
	var old clusterkeys.Generation
	for _, g := range pub.Generations[1:] {
		if g.State == clusterkeys.StateActive {
			old = g
			break
		}
	}
	require.NotZero(t, old.Number, "an active older generation: %v", pub.Generations)
	plain := []byte("password: PLAINTEXT-rewrap-e2e\n")
	file := sopskit.SopsEncrypt(t, plain, "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: old.Recipient}}})
	ask := func(c client.Client, ns, value string, data []byte) (*corev1.Secret, error) {
		s := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rewrap-me", Annotations: map[string]string{mutate.AnnotationRewrap: value}},
			Data:       map[string][]byte{"values.enc.yaml": data},
		}
		return s, c.Create(ctx, s, client.DryRunAll)
	}

	answer, err := ask(b.cp.Client, "apps", "true", file)
	require.NoError(t, err)
	rewrapped := answer.Data["values.enc.yaml"]
	assert.NotContains(t, string(rewrapped), "PLAINTEXT", "no plaintext in the answer")
	assert.Contains(t, string(rewrapped), current.Recipient)
	assert.Contains(t, string(rewrapped), old.Recipient)
	assert.Contains(t, string(rewrapped), b.breakGlass.Recipient, "the break-glass recipient too")
	before, after := encTokens.FindAllString(string(file), -1), encTokens.FindAllString(string(rewrapped), -1)
	require.NotEmpty(t, before)
	assert.ElementsMatch(t, before, after, "values and MAC unchanged")
	assert.NotContains(t, wh.Logs(), "PLAINTEXT-rewrap-e2e")
	require.Error(t, b.cp.Client.Get(ctx, client.ObjectKey{Namespace: "apps", Name: "rewrap-me"}, &corev1.Secret{}), "a dry run stores nothing")

	// Retire the older generation, as an operator would.
	secrets := b.kube.CoreV1().Secrets("sops-webhook")
	s, err := secrets.Get(ctx, clusterkeys.DefaultSecretName, metav1.GetOptions{})
	require.NoError(t, err)
	idx := string(s.Data["generations.json"])
	at := strings.Index(idx, old.Recipient)
	require.Positive(t, at)
	s.Data["generations.json"] = []byte(idx[:at] + strings.Replace(idx[at:], `"active"`, `"retired"`, 1))
	_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return strings.Contains(wh.Logs(), fmt.Sprintf("%d retired %s", old.Number, old.Recipient))
	}, 30*time.Second, 100*time.Millisecond, "the webhook loads the retirement")
	err = b.create(ctx, "not-rewrapped", file)
	require.Error(t, err, "the file as it was opens with the retired generation only")
	require.NoError(t, b.create(ctx, "rewrapped", rewrapped))
	assert.Equal(t, string(plain), b.stored(ctx, t, "rewrapped"))

	// Dropping the retired generation leaves only the current one.
	answer, err = ask(b.cp.Client, "apps", mutate.RewrapDropRetired, rewrapped)
	require.NoError(t, err)
	assert.NotContains(t, string(answer.Data["values.enc.yaml"]), old.Recipient)
	assert.Contains(t, string(answer.Data["values.enc.yaml"]), current.Recipient)

	// The same checks as a decryption: namespace and requireRBAC.
	_, err = ask(b.cp.Client, "team-b", "true", rewrapped)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `cannot rewrap Secret team-b/rewrap-me field data.values.enc.yaml: the key that opens it is not granted here; key "cluster" is not granted to Secrets in namespace "team-b"`)
	_, err = ask(b.cp.Client, "guarded", "true", rewrapped)
	require.NoError(t, err, "the admin may use the key")
	require.NoError(t, b.cp.Client.Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: "guarded", Name: "secrets"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create"}}},
	}))
	require.NoError(t, b.cp.Client.Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: "guarded", Name: "jane-secrets"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "secrets"},
		Subjects:   []rbacv1.Subject{{Kind: "User", Name: "jane"}},
	}))
	var last error
	require.Eventually(t, func() bool {
		_, last = ask(b.impersonate(t, "jane"), "guarded", "true", rewrapped)
		return last != nil && strings.Contains(last.Error(), "not granted")
	}, 30*time.Second, 200*time.Millisecond, "jane, who may create Secrets but not use the key: %v", last)
}

// plugin runs kubectl-sops_webhook, built as make build builds it, against
// this cluster and a second one with a webhook of its own: recipients,
// sops-config over both clusters (a file encrypted once decrypts in both),
// rewrap, keys, a retirement refused while in use, and rotate.
func (b *generatedBed) plugin(ctx context.Context, t *testing.T, wh *testbed.Webhook) {
	bin, err := testbed.BuildPlugin(b.work)
	require.NoError(t, err)
	west := b.secondCluster(ctx, t)
	kubeconfig := mergedKubeconfig(t, map[string]string{"east": b.admin, "west": west.admin})
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", kubeconfig, "--context", "east"}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("%v: %s", err, stderr.String())
		}
		return string(out), nil
	}
	pub, _ := b.recipientsOf(ctx, t, "cluster")
	current := pub.Generations[0]

	t.Run("recipients", func(t *testing.T) {
		out, err := run("recipients", "-n", "apps", "-o", "json")
		require.NoError(t, err)
		var got []struct{ Key, Recipient string }
		require.NoError(t, json.Unmarshal([]byte(out), &got))
		assert.ElementsMatch(t, []struct{ Key, Recipient string }{{"cluster", current.Recipient}, {"handmade", b.handmade.Recipient}}, got)
		out, err = run("recipients", "-n", "team-b")
		require.NoError(t, err)
		assert.Contains(t, out, "pq ")
		assert.NotContains(t, out, current.Recipient)
	})

	t.Run("sops-config encrypts once for two clusters", func(t *testing.T) {
		cmd := exec.CommandContext(ctx, bin, "--kubeconfig", kubeconfig, "sops-config", "--context", "east", "--context", "west")
		out, err := cmd.Output()
		require.NoError(t, err)
		assert.Contains(t, string(out), current.Recipient)
		file := sopsWithConfig(t, string(out), "apps/two-clusters.enc.yaml", []byte("k: PLAINTEXT-two-clusters\n"))
		for _, c := range []client.Client{b.cp.Client, west.cp.Client} {
			s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "two-clusters"}, Data: map[string][]byte{"app.yaml": file}}
			require.NoError(t, c.Create(ctx, s))
			require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(s), s))
			assert.Equal(t, "k: PLAINTEXT-two-clusters\n", string(s.Data["app.yaml"]))
		}
	})

	t.Run("rotate", func(t *testing.T) {
		before, _ := b.recipientsOf(ctx, t, "cluster")
		_, err := run("rotate", "cluster")
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			p, _ := b.recipientsOf(ctx, t, "cluster")
			return p.Generations[0].Number > before.Generations[0].Number && p.Generations[0].State == clusterkeys.StateCurrent
		}, 30*time.Second, 100*time.Millisecond)
		_, err = run("rotate", "handmade")
		require.Error(t, err)
		assert.Contains(t, err.Error(), `key "handmade" is not generated in the cluster`)
	})

	t.Run("rewrap", func(t *testing.T) {
		// The generation current before the rotation is active.
		older := sopskit.SopsEncrypt(t, []byte("k: PLAINTEXT-plugin-rewrap\n"), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: current.Recipient}}})
		now, _ := b.recipientsOf(ctx, t, "cluster")
		require.NotEqual(t, current.Recipient, now.Generations[0].Recipient)
		path := filepath.Join(t.TempDir(), "values.enc.yaml")
		require.NoError(t, os.WriteFile(path, older, 0o600))
		out, err := run("rewrap", path, "-n", "apps")
		require.NoError(t, err)
		assert.Contains(t, out, now.Generations[0].Recipient)
		assert.NotContains(t, out, "PLAINTEXT")
		_, err = run("rewrap", path, "-n", "team-b")
		require.Error(t, err, "not granted there")
	})

	var inUse int
	t.Run("keys counts the objects each generation decrypted", func(t *testing.T) {
		out, err := run("keys", "-o", "json")
		require.NoError(t, err)
		var rows []struct {
			Key        string
			Generation int
			State      string
			Secrets    int
			ConfigMaps int
		}
		require.NoError(t, json.Unmarshal([]byte(out), &rows))
		want := map[string]int{}
		for _, ns := range []string{"apps"} {
			list := &corev1.SecretList{}
			require.NoError(t, b.cp.Client.List(ctx, list, client.InNamespace(ns)))
			for _, s := range list.Items {
				for _, k := range strings.Split(s.Annotations[mutate.AnnotationKeys], ",") {
					want[k]++
				}
			}
		}
		for _, r := range rows {
			if r.Key == "cluster" {
				assert.Equal(t, want["cluster@"+strconv.Itoa(r.Generation)], r.Secrets, "generation %d", r.Generation)
				if r.Secrets > 0 && r.State != string(clusterkeys.StateRetired) && inUse == 0 {
					inUse = r.Generation
				}
			}
		}
		require.NotZero(t, inUse, "a generation in use: %s", out)
	})

	t.Run("retiring a generation in use is refused and names the objects", func(t *testing.T) {
		_, err := run("retire", "cluster@"+strconv.Itoa(inUse))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "Secret apps/")
		assert.Contains(t, err.Error(), "--force")
		_, err = run("retire", "cluster@"+strconv.Itoa(inUse), "--force")
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			p, _ := b.recipientsOf(ctx, t, "cluster")
			for _, g := range p.Generations {
				if g.Number == inUse {
					return g.State == clusterkeys.StateRetired
				}
			}
			return false
		}, 30*time.Second, 100*time.Millisecond)
	})

}

// secondCluster is a second control plane with a webhook of its own that
// generates the key cluster for its namespace apps.
func (b *generatedBed) secondCluster(ctx context.Context, t *testing.T) *generatedBed {
	cp, err := testbed.StartControlPlane()
	require.NoError(t, err)
	t.Cleanup(func() { _ = cp.Stop() })
	w := &generatedBed{identityBed: &identityBed{cp: cp, work: t.TempDir(), bin: b.bin}, handmade: sopskit.NewAgeKey(t, false), breakGlass: b.breakGlass}
	w.admin = filepath.Join(w.work, "admin.kubeconfig")
	require.NoError(t, cp.WriteKubeconfig(w.admin))
	w.kubeconfig = w.admin
	for _, ns := range []string{"sops-webhook", "apps"} {
		require.NoError(t, cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{mutate.LabelDecrypt: "enabled"}}}))
	}
	wh := w.start(ctx, t, "west")
	require.NoError(t, cp.RegisterWebhook(ctx, wh.URL, wh.CABundle))
	require.NoError(t, cp.WaitForWebhook(ctx, "apps"))
	return w
}

// mergedKubeconfig writes one kubeconfig holding the current context of
// each file, renamed to its key, and returns its path.
func mergedKubeconfig(t *testing.T, files map[string]string) string {
	merged := clientcmdapi.NewConfig()
	for name, path := range files {
		c, err := clientcmd.LoadFromFile(path)
		require.NoError(t, err)
		ctx := c.Contexts[c.CurrentContext]
		merged.Clusters[name] = c.Clusters[ctx.Cluster]
		merged.AuthInfos[name] = c.AuthInfos[ctx.AuthInfo]
		merged.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	}
	path := filepath.Join(t.TempDir(), "merged.kubeconfig")
	require.NoError(t, clientcmd.WriteToFile(*merged, path))
	return path
}

// restore takes the published backup of cluster's current generation,
// opens it with the age CLI and the break-glass identity alone, as
// docs/operations.md says, and gives it to a webhook on a fresh control
// plane as a hand-made key: a file encrypted for that generation before
// decrypts there.
func (b *generatedBed) restore(ctx context.Context, t *testing.T) {
	pub, _ := b.recipientsOf(ctx, t, "cluster")
	gen := pub.Generations[0]
	file := sopskit.SopsEncrypt(t, []byte("k: PLAINTEXT-restored\n"), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{{Recipient: gen.Recipient}}})

	jane := b.impersonate(t, "jane")
	err := jane.Get(ctx, client.ObjectKey{Namespace: "sops-webhook", Name: clusterkeys.DefaultBackupsConfigMapName}, &corev1.ConfigMap{})
	assert.True(t, apierrors.IsForbidden(err), "the backups are the operator's, not every user's: %v", err)
	backups := &corev1.ConfigMap{}
	require.NoError(t, b.cp.Client.Get(ctx, client.ObjectKey{Namespace: "sops-webhook", Name: clusterkeys.DefaultBackupsConfigMapName}, backups))
	backup := backups.Data[clusterkeys.BackupName("cluster", gen.Number)]
	require.NotEmpty(t, backup, "generation %d's backup is published: %v", gen.Number, backups.Data)
	assert.NotContains(t, backup, "AGE-SECRET-KEY")

	tools := sopskit.Need(t, "the age CLI", func(t sopskit.Tools) string { return t.Age })
	dir := t.TempDir()
	exported := filepath.Join(dir, "cluster.agekey.age")
	require.NoError(t, os.WriteFile(exported, []byte(backup), 0o600))
	restored := filepath.Join(dir, "restored.agekey")
	out, err := exec.CommandContext(ctx, tools.Age, "--decrypt", "--identity", b.breakGlass.IdentityFile, "--output", restored, exported).CombinedOutput()
	require.NoError(t, err, "%s", out)

	fresh, err := testbed.StartControlPlane()
	require.NoError(t, err)
	t.Cleanup(func() { _ = fresh.Stop() })
	require.NoError(t, fresh.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{mutate.LabelDecrypt: "enabled"}}}))
	config := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte("apiVersion: sops-webhook.io/v1alpha1\nkind: Config\nkeys:\n  - name: restored\n    age: {identityFile: "+restored+"}\n"), 0o600))
	wh, err := testbed.StartWebhookWith(ctx, b.bin, testbed.WebhookOptions{Config: config, WorkDir: dir, Log: verbose()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = wh.Stop() })
	require.NoError(t, fresh.RegisterWebhook(ctx, wh.URL, wh.CABundle))
	require.NoError(t, fresh.WaitForWebhook(ctx, "apps"))
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "made-before"}, Data: map[string][]byte{"app.yaml": file}}
	require.NoError(t, fresh.Client.Create(ctx, s))
	require.NoError(t, fresh.Client.Get(ctx, client.ObjectKeyFromObject(s), s))
	assert.Equal(t, "k: PLAINTEXT-restored\n", string(s.Data["app.yaml"]))
}

// noPrivateKeyLeaks reads every private key from the Secret and looks for
// each in the webhook's logs and metrics, and in every ConfigMap, event and
// Secret (but the keys' own) and every annotation of the cluster.
func (b *generatedBed) noPrivateKeyLeaks(ctx context.Context, t *testing.T, wh *testbed.Webhook) {
	s, err := b.kube.CoreV1().Secrets("sops-webhook").Get(ctx, clusterkeys.DefaultSecretName, metav1.GetOptions{})
	require.NoError(t, err)
	var private []string
	for name, v := range s.Data {
		if strings.HasSuffix(name, ".agekey") {
			id := strings.TrimSpace(string(v))
			require.True(t, strings.HasPrefix(id, "AGE-SECRET-KEY-"))
			private = append(private, id, strings.ToLower(id), strings.TrimPrefix(id, "AGE-SECRET-KEY-1"), strings.TrimPrefix(id, "AGE-SECRET-KEY-PQ-1"))
		}
	}
	require.GreaterOrEqual(t, len(private), 4*4, "cluster's generations, at least three, and pq's one")
	resp, err := http.Get(wh.MetricsURL)
	require.NoError(t, err)
	metrics, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	haystacks := []string{string(metrics)}
	for _, w := range b.started {
		haystacks = append(haystacks, w.Logs())
	}
	meta := func(m metav1.ObjectMeta) {
		haystacks = append(haystacks, m.Name)
		haystacks = append(haystacks, mapValues(m.Annotations)...)
		haystacks = append(haystacks, mapValues(m.Labels)...)
	}
	cms, err := b.kube.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, cm := range cms.Items {
		meta(cm.ObjectMeta)
		haystacks = append(haystacks, mapValues(cm.Data)...)
		for _, v := range cm.BinaryData {
			haystacks = append(haystacks, string(v))
		}
	}
	all, err := b.kube.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, sec := range all.Items {
		meta(sec.ObjectMeta)
		if sec.Namespace == "sops-webhook" && sec.Name == clusterkeys.DefaultSecretName {
			continue // the one place the keys live
		}
		for _, v := range sec.Data {
			haystacks = append(haystacks, string(v))
		}
	}
	events, err := b.kube.CoreV1().Events("").List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, e := range events.Items {
		meta(e.ObjectMeta)
		haystacks = append(haystacks, e.Message, e.Reason)
	}
	for _, h := range haystacks {
		for _, p := range private {
			require.NotContains(t, h, p)
		}
	}
}

func mapValues(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
