package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sops-webhook/sops-webhook/certs"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/pkg/selfcerts"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
	"github.com/sops-webhook/sops-webhook/test/testbed/testpki"
)

// deploySuite runs the deployment manifests against a control plane of its
// own: the manifests install cluster-wide objects (CRDs, a VAP) that the
// other e2e tests must not see.
type deploySuite struct {
	cp         *testbed.ControlPlane
	c          client.Client
	kubeconfig string
	work       string
	bin        string
	config     string
	age        sopskit.AgeKey
	// doc is a dotenv SOPS document for age; plain is its plaintext.
	doc, plain []byte

	selfManagedWebhook *testbed.Webhook
}

func TestDeployment(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts kube-apiserver; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := &deploySuite{age: sopskit.NewAgeKey(t, false), work: t.TempDir()}
	cp, err := testbed.StartControlPlane()
	require.NoError(t, err)
	t.Cleanup(func() { _ = cp.Stop() })
	s.cp, s.c = cp, cp.Client
	s.kubeconfig = filepath.Join(s.work, "kubeconfig")
	require.NoError(t, cp.WriteKubeconfig(s.kubeconfig))
	s.bin, err = testbed.BuildWebhook(s.work)
	require.NoError(t, err)
	s.config = filepath.Join(s.work, "config.yaml")
	require.NoError(t, os.WriteFile(s.config, s.age.Config("team-a"), 0o600))
	s.plain = []byte("PASSWORD=deploy-PLAINTEXT-1\n")
	s.doc = sopskit.SopsEncrypt(t, s.plain, "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{s.age}})
	for _, ns := range []string{"sops-webhook", "apps"} {
		obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{mutate.LabelDecrypt: "enabled"}}}
		require.NoError(t, s.c.Create(ctx, obj))
	}

	t.Run("every manifest of both overlays is accepted by the API server", s.manifestsAccepted)
	t.Run("VAP rejects ciphertext while no webhook is registered", s.vapWithoutWebhook)
	t.Run("self-managed certificates: issued, caBundle patched, rotated under load", s.selfManaged)
	t.Run("self-managed certificates: the service account may write only its TLS Secret and CA ConfigMap, and not the webhook configuration", s.confinedIdentity)
	t.Run("two replicas behind one Service: stopping one loses no request", s.twoReplicas)
	t.Run("self-managed certificates: the webhook issues the API server's client certificate", s.selfIssuedClient)
	t.Run("cert-manager issues the API server's client certificate from the chart's templates", s.certManagerIssuedClient)
	// Last: it registers a webhook with no endpoints.
	t.Run("helm install and uninstall of the chart", s.helmInstall)
}

// kubectl runs the machine's kubectl against the control plane.
func (s *deploySuite) kubectl(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	out, err := runKubectl(s.kubeconfig, stdin, args...)
	require.NoError(t, err)
	return out
}

// runKubectl runs the machine's kubectl with kubeconfig, stdin (when not
// nil) and args, and returns its output; the error carries its stderr.
func runKubectl(kubeconfig string, stdin []byte, args ...string) (string, error) {
	cmd := exec.Command("kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// render builds a kustomization of the repository with kubectl, with the
// repository's components (manifests/components/NAME) added to it.
func (s *deploySuite) render(t *testing.T, dir string, components ...string) []byte {
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	if len(components) == 0 {
		return []byte(s.kubectl(t, nil, "kustomize", filepath.Join(root, dir)))
	}
	// kustomize takes only relative paths.
	wrap := t.TempDir()
	rel := func(p string) string {
		r, err := filepath.Rel(wrap, filepath.Join(root, p))
		require.NoError(t, err)
		return r
	}
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [" + rel(dir) + "]\ncomponents:\n"
	for _, c := range components {
		k += "  - " + rel(filepath.Join("manifests/components", c)) + "\n"
	}
	require.NoError(t, os.WriteFile(filepath.Join(wrap, "kustomization.yaml"), []byte(k), 0o644))
	return []byte(s.kubectl(t, nil, "kustomize", wrap))
}

func (s *deploySuite) manifestsAccepted(t *testing.T) {
	tools, err := sopskit.Load()
	require.NoError(t, err)
	require.NotEmpty(t, tools.CRDDirs, "run make testbed: CRDs missing")
	for _, dir := range tools.CRDDirs {
		s.kubectl(t, nil, "apply", "--server-side", "-f", dir)
	}
	s.kubectl(t, nil, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/certificates.cert-manager.io", "crd/issuers.cert-manager.io", "crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com")

	t.Run("manifests/monitoring", func(t *testing.T) {
		root, err := sopskit.RepoRoot()
		require.NoError(t, err)
		out := s.kubectl(t, nil, "apply", "--server-side", "--dry-run=server", "--field-manager=sops-webhook-test", "-f", filepath.Join(root, "manifests/monitoring/prometheusrule.yaml"))
		assert.Contains(t, out, "prometheusrule.monitoring.coreos.com/sops-webhook serverside-applied")
	})

	for _, overlay := range []string{"manifests/overlays/cert-manager", "manifests/overlays/self-managed"} {
		t.Run(overlay, func(t *testing.T) {
			rendered := s.render(t, overlay)
			assert.Contains(t, string(rendered), "--client-ca-file=/etc/sops-webhook/client-ca/ca.crt", "the base requires the API server's client certificate")
			out := s.kubectl(t, rendered, "apply", "--server-side", "--dry-run=server", "--field-manager=sops-webhook-test", "-f", "-")
			kinds := strings.Count(string(rendered), "\nkind: ")
			assert.Equal(t, kinds, strings.Count(out, "serverside-applied"), "every object accepted:\n%s", out)
			for _, want := range []string{"deployment.apps/sops-webhook", "mutatingwebhookconfiguration.admissionregistration.k8s.io/sops-webhook",
				"validatingadmissionpolicy.admissionregistration.k8s.io/sops-webhook-no-ciphertext", "poddisruptionbudget.policy/sops-webhook"} {
				assert.Contains(t, out, want)
			}
			if strings.HasSuffix(overlay, "cert-manager") {
				assert.Contains(t, out, "certificate.cert-manager.io/sops-webhook")
			} else {
				assert.Contains(t, out, "clusterrole.rbac.authorization.k8s.io/sops-webhook-cabundle")
				assert.Contains(t, out, "deployment.apps/sops-webhook-cabundle")
			}
		})
	}

	for _, component := range []string{"caller-auth-network-policy", "caller-auth-none"} {
		t.Run("manifests/components/"+component, func(t *testing.T) {
			for _, overlay := range []string{"manifests/overlays/cert-manager", "manifests/overlays/self-managed"} {
				rendered := s.render(t, overlay, component)
				out := s.kubectl(t, rendered, "apply", "--server-side", "--dry-run=server", "--field-manager=sops-webhook-test", "-f", "-")
				assert.Equal(t, strings.Count(string(rendered), "\nkind: "), strings.Count(out, "serverside-applied"), "every object accepted:\n%s", out)
				dep := testbed.ParseObjectsByName(t, string(rendered))["Deployment/sops-webhook"]
				require.NotNil(t, dep, "%s: the webhook's Deployment", overlay)
				raw, err := json.Marshal(dep)
				require.NoError(t, err)
				mode := strings.TrimPrefix(component, "caller-auth-")
				assert.Contains(t, string(raw), `"--caller-auth=`+mode+`"`, overlay)
				assert.NotContains(t, string(raw), "client-ca", "%s: the client CA is gone with client certificates", overlay)
				if strings.HasSuffix(overlay, "self-managed") {
					assert.Contains(t, string(raw), "--certificates=self-managed", "the overlay's own argument is kept")
				}
				np, err := json.Marshal(testbed.ParseObjects(t, string(rendered))["NetworkPolicy"])
				require.NoError(t, err)
				assert.Equal(t, mode == "network-policy", strings.Contains(string(np), `"ipBlock"`), "only network-policy narrows the webhook port: %s", np)
			}
		})
	}

	t.Run("the chart refuses to render until the caller authentication is chosen", func(t *testing.T) {
		h := testbed.HelmCLIs(t, "")[0]
		root, err := sopskit.RepoRoot()
		require.NoError(t, err)
		for _, c := range []struct {
			args []string
			want string
		}{
			{nil, "set callerAuth.mode"},
			{[]string{"--set", "callerAuth.mode=networkPolicy"}, "needs networkPolicy.enabled and networkPolicy.apiServerSources"},
			{[]string{"--set", "callerAuth.mode=networkPolicy", "--set", "networkPolicy.enabled=false", "--set", "networkPolicy.apiServerSources[0].ipBlock.cidr=10.0.0.2/32"}, "needs networkPolicy.enabled"},
		} {
			_, err := h.Run(append([]string{"template", "sw", filepath.Join(root, "charts/sops-webhook"), "--kube-version", "1.37.2"}, c.args...)...)
			require.Error(t, err, "rendered with %v", c.args)
			assert.Contains(t, err.Error(), c.want)
		}
	})

	for _, h := range testbed.HelmCLIs(t, s.kubeconfig) {
		for _, vs := range chartValueSets {
			t.Run("chart/"+h.Name+"/"+vs.name, func(t *testing.T) {
				rendered := s.renderChart(t, h, "sops-webhook", vs.args...)
				out := s.kubectl(t, []byte(rendered), "apply", "--server-side", "--dry-run=server", "--field-manager=sops-webhook-test", "-f", "-")
				assert.Equal(t, strings.Count(rendered, "\nkind: "), strings.Count(out, "serverside-applied"), "every object accepted:\n%s", out)
				for _, want := range vs.want {
					assert.Contains(t, out, want)
				}
			})
		}
	}

	t.Run("chart and manifests register the same webhook and policy", func(t *testing.T) {
		h := testbed.HelmCLIs(t, "")[0]
		chart := testbed.ParseObjectsByName(t, s.renderChart(t, h, "sops-webhook", chartNone...))
		kustomized := testbed.ParseObjectsByName(t, string(s.render(t, "manifests/overlays/cert-manager")))
		for _, name := range []string{"MutatingWebhookConfiguration/sops-webhook",
			"ValidatingAdmissionPolicy/sops-webhook-no-ciphertext", "ValidatingAdmissionPolicyBinding/sops-webhook-no-ciphertext",
			"ValidatingAdmissionPolicy/sops-webhook-provenance", "ValidatingAdmissionPolicyBinding/sops-webhook-provenance"} {
			a, b := chart[name], kustomized[name]
			require.NotNil(t, a, name)
			require.NotNil(t, b, name)
			kind, _, _ := strings.Cut(name, "/")
			assert.Equal(t, normalizeSpace(specOf(t, kind, b)), normalizeSpace(specOf(t, kind, a)), name)
		}
	})

	t.Run("chart and manifests ship the same alert rules", func(t *testing.T) {
		root, err := sopskit.RepoRoot()
		require.NoError(t, err)
		h := testbed.HelmCLIs(t, "")[0]
		chart := testbed.ParseObjects(t, s.renderChart(t, h, "sops-webhook", append(chartNone, "--set", "prometheusRule.enabled=true")...))["PrometheusRule"]
		raw, err := os.ReadFile(filepath.Join(root, "manifests/monitoring/prometheusrule.yaml"))
		require.NoError(t, err)
		file := testbed.ParseObjects(t, string(raw))["PrometheusRule"]
		require.NotNil(t, chart, "the chart renders a PrometheusRule")
		require.NotNil(t, file)
		assert.Equal(t, file["spec"], chart["spec"])
		assert.Nil(t, testbed.ParseObjects(t, s.renderChart(t, h, "sops-webhook", chartNone...))["PrometheusRule"], "off by default")
	})
}

// chartNone are the chart values of the one choice the chart needs made,
// for renders that check something else.
var chartNone = []string{"--set", "callerAuth.mode=none"}

// chartValueSets are the chart's default values, with each caller
// authentication, and non-default ones.
var chartValueSets = []struct {
	name string
	args []string
	want []string
}{
	{"defaults, client certificate", []string{"--set", "callerAuth.mode=clientCertificate", "--set-file", "callerAuth.clientCertificate.caBundle=testdata/client-ca.crt"},
		[]string{"certificate.cert-manager.io/sops-webhook", "issuer.cert-manager.io/sops-webhook-selfsigned",
			"validatingadmissionpolicy.admissionregistration.k8s.io/sops-webhook-no-ciphertext", "configmap/sops-webhook-client-ca",
			"networkpolicy.networking.k8s.io/sops-webhook"}},
	{"network policy", []string{"--set", "callerAuth.mode=networkPolicy", "--set", "networkPolicy.apiServerSources[0].ipBlock.cidr=172.16.0.2/32"},
		[]string{"networkpolicy.networking.k8s.io/sops-webhook"}},
	{"cert-manager issues the API server's certificate", []string{"--set", "callerAuth.mode=clientCertificate"},
		[]string{"certificate.cert-manager.io/sops-webhook-apiserver-client", "certificate.cert-manager.io/sops-webhook-client-ca",
			"issuer.cert-manager.io/sops-webhook-client-ca", "issuer.cert-manager.io/sops-webhook-client-ca-selfsigned"}},
	{"self-managed issues the API server's certificate", []string{"--set", "callerAuth.mode=clientCertificate", "--set", "certificates.mode=self-managed"},
		[]string{"clusterrole.rbac.authorization.k8s.io/sops-webhook-cabundle", "deployment.apps/sops-webhook-cabundle", "clusterrole.rbac.authorization.k8s.io/sops-webhook-read-configuration"}},
	{"none, no NetworkPolicy", []string{"--set", "callerAuth.mode=none", "--set", "networkPolicy.enabled=false"},
		[]string{"deployment.apps/sops-webhook"}},
	{"self-managed, ServiceMonitor, no VAP, pinned image", []string{
		"--set", "callerAuth.mode=clientCertificate", "--set", "callerAuth.clientCertificate.existingConfigMap=corp-ca",
		"--set", "certificates.mode=self-managed", "--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true", "--set", "validatingAdmissionPolicy.enabled=false",
		"--set", "replicas=3", "--set", "image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
		"--set", "webhook.excludedNamespaces={kube-system,flux-system}", "--set", "priorityClassName=system-cluster-critical",
	}, []string{"servicemonitor.monitoring.coreos.com/sops-webhook", "prometheusrule.monitoring.coreos.com/sops-webhook", "clusterrole.rbac.authorization.k8s.io/sops-webhook-cabundle",
		"validatingadmissionpolicy.admissionregistration.k8s.io/sops-webhook-confine"}},
	{"cert-manager with a ClusterIssuer", []string{
		"--set", "callerAuth.mode=none",
		"--set", "certificates.certManager.issuerRef.name=corp-ca", "--set", "certificates.certManager.issuerRef.kind=ClusterIssuer",
	}, []string{"certificate.cert-manager.io/sops-webhook"}},
}

// renderChart renders charts/sops-webhook as release into sops-webhook.
func (s *deploySuite) renderChart(t *testing.T, h *testbed.Helm, release string, args ...string) string {
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	return h.MustRun(t, append([]string{"template", release, filepath.Join(root, "charts/sops-webhook"), "-n", "sops-webhook", "--kube-version", "1.37.2"}, args...)...)
}

// normalizeSpace folds runs of white space in every string of v, so that
// YAML line folding (kustomize re-folds block scalars) does not count.
func normalizeSpace(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, c := range v {
			v[k] = normalizeSpace(c)
		}
	case []any:
		for i, c := range v {
			v[i] = normalizeSpace(c)
		}
	case string:
		return strings.Join(strings.Fields(v), " ")
	}
	return v
}

// specOf is what must agree between the chart and the manifests: the
// webhooks without their client config, or a policy's spec.
func specOf(t *testing.T, kind string, obj map[string]any) any {
	t.Helper()
	if kind != "MutatingWebhookConfiguration" {
		return obj["spec"]
	}
	hooks := obj["webhooks"].([]any)
	for _, h := range hooks {
		delete(h.(map[string]any), "clientConfig")
	}
	return hooks
}

func (s *deploySuite) helmInstall(t *testing.T) {
	ctx := context.Background()
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	for _, h := range testbed.HelmCLIs(t, s.kubeconfig) {
		t.Run(h.Name, func(t *testing.T) {
			h.MustRun(t, "install", "sw", filepath.Join(root, "charts/sops-webhook"), "-n", "sops-webhook", "--set", "certificates.mode=self-managed",
				"--set", "callerAuth.mode=clientCertificate", "--set-file", "callerAuth.clientCertificate.caBundle="+clientCAFile(t))
			live, err := testbed.LoadWebhookConfiguration("https://unused", nil)
			require.NoError(t, err)
			mwc := live.DeepCopy()
			require.NoError(t, s.c.Get(ctx, client.ObjectKey{Name: "sw-sops-webhook"}, mwc))
			assert.Equal(t, "sw-sops-webhook", mwc.Webhooks[0].ClientConfig.Service.Name)
			assert.Equal(t, "sops-webhook", mwc.Webhooks[0].ClientConfig.Service.Namespace)

			h.MustRun(t, "uninstall", "sw", "-n", "sops-webhook", "--wait")
			err = s.c.Get(ctx, client.ObjectKey{Name: "sw-sops-webhook"}, mwc)
			assert.True(t, apierrors.IsNotFound(err), "the webhook is still registered after uninstall: %v", err)
			var dep appsv1.Deployment
			err = s.c.Get(ctx, client.ObjectKey{Namespace: "sops-webhook", Name: "sw-sops-webhook"}, &dep)
			assert.True(t, apierrors.IsNotFound(err), "the Deployment is left: %v", err)
		})
	}
}

// create creates a Secret in ns holding value under app.env.
func (s *deploySuite) create(ctx context.Context, ns, name string, value []byte, mod func(*corev1.Secret)) error {
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Data: map[string][]byte{"app.env": value}}
	if mod != nil {
		mod(sec)
	}
	return s.c.Create(ctx, sec)
}

func (s *deploySuite) vapWithoutWebhook(t *testing.T) {
	ctx := context.Background()
	root, err := sopskit.RepoRoot()
	require.NoError(t, err)
	s.kubectl(t, nil, "apply", "-f", filepath.Join(root, "manifests/base/validatingadmissionpolicy.yaml"))

	binary := append([]byte("\x00\xff\xfe not text "), s.doc[:10]...)
	tests := []struct {
		name    string
		ns      string
		value   []byte
		mod     func(*corev1.Secret)
		allowed bool
	}{
		{"Secret with a SOPS document", "apps", s.doc, nil, false},
		{"Secret with a values token and index", "apps", []byte("x"), func(sec *corev1.Secret) {
			sec.Annotations = map[string]string{mutate.AnnotationValues: "{}"}
		}, false},
		{"plain Secret", "apps", []byte("PASSWORD=plain\n"), nil, true},
		{"binary Secret that is not UTF-8", "apps", binary, nil, true},
		{"Helm release record", "apps", s.doc, func(sec *corev1.Secret) {
			sec.Type = mutate.HelmReleaseSecretType
			sec.Labels = map[string]string{"owner": "helm"}
		}, true},
		{"object opted out", "apps", s.doc, func(sec *corev1.Secret) {
			sec.Labels = map[string]string{mutate.LabelDecrypt: "disabled"}
		}, true},
		{"namespace not opted in", "default", s.doc, nil, true},
		{"the webhook's own namespace", "sops-webhook", s.doc, nil, true},
		{"a provenance record where the webhook is not called", "default", []byte("PASSWORD=plain\n"), func(sec *corev1.Secret) {
			sec.Annotations = map[string]string{mutate.AnnotationDecrypted: "data.app.env"}
		}, false},
		{"a provenance record on an object opted out", "apps", []byte("PASSWORD=plain\n"), func(sec *corev1.Secret) {
			sec.Labels = map[string]string{mutate.LabelDecrypt: "disabled"}
			sec.Annotations = map[string]string{mutate.AnnotationKeys: "default"}
		}, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The policy takes a moment to be enforced after creation.
			name := fmt.Sprintf("vap-%d", i)
			if !tt.allowed {
				require.Eventually(t, func() bool {
					err := s.create(ctx, tt.ns, name, tt.value, tt.mod)
					if err == nil {
						_ = s.c.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: tt.ns}})
						return false
					}
					if tt.mod != nil && strings.Contains(tt.name, "provenance") {
						assert.Contains(t, err.Error(), "they are written only by it, and it is not called for this object")
					} else {
						assert.Contains(t, err.Error(), "still holds SOPS ciphertext")
					}
					assert.Contains(t, err.Error(), "Secret "+tt.ns+"/"+name)
					return true
				}, 20*time.Second, 200*time.Millisecond, "the VAP never rejected it")
				return
			}
			require.NoError(t, s.create(ctx, tt.ns, name, tt.value, tt.mod))
		})
	}
	t.Run("a provenance record kept as stored, or dropped, where the webhook is not called", func(t *testing.T) {
		// Written while the namespace was opted in; the object is then
		// updated where the webhook is not called.
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "vap-kept", Namespace: "sops-webhook"}}
		require.NoError(t, s.c.Create(ctx, sec))
		require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(sec), sec))
		sec.Data = map[string][]byte{"x": []byte("y")}
		require.NoError(t, s.c.Update(ctx, sec), "no record: any update")
		sec.Annotations = map[string]string{mutate.AnnotationDecrypted: "data.x"}
		err := s.c.Update(ctx, sec)
		require.Error(t, err, "a record added")
		assert.Contains(t, err.Error(), "they are written only by it")
	})
	t.Run("ConfigMap with a SOPS document", func(t *testing.T) {
		err := s.c.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "vap-cm", Namespace: "apps"}, Data: map[string]string{"app.env": string(s.doc)}})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "still holds SOPS ciphertext")
	})
	t.Run("ConfigMap with a SOPS document in binaryData", func(t *testing.T) {
		err := s.c.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "vap-cm-bin", Namespace: "apps"}, BinaryData: map[string][]byte{"blob": s.doc}})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "still holds SOPS ciphertext")
	})
}

// stream creates Secrets holding a SOPS document in one namespace until
// finish, and reports which were created and the errors.
type stream struct {
	c       client.Client
	ns      string
	created atomic.Int64
	mu      sync.Mutex
	errs    []error
	names   []string
	stop    chan struct{}
	done    chan struct{}
}

// startStream runs workers goroutines that create Secrets in ns, each
// holding doc under app.env, until finish.
func startStream(c client.Client, ns, prefix string, doc []byte, workers int) *stream {
	st := &stream{c: c, ns: ns, stop: make(chan struct{}), done: make(chan struct{})}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-st.stop:
					return
				default:
				}
				name := fmt.Sprintf("%s-%d-%d", prefix, w, i)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Data: map[string][]byte{"app.env": doc}})
				cancel()
				st.mu.Lock()
				if err != nil {
					st.errs = append(st.errs, err)
				} else {
					st.names = append(st.names, name)
					st.created.Add(1)
				}
				st.mu.Unlock()
			}
		})
	}
	go func() { wg.Wait(); close(st.done) }()
	return st
}

func (st *stream) finish() ([]string, []error) {
	close(st.stop)
	<-st.done
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.names, st.errs
}

// finishNoneLost stops the stream and checks that it wrote something during
// what, lost no write, and stored every one decrypted to plain.
func (st *stream) finishNoneLost(t *testing.T, what string, plain []byte) {
	t.Helper()
	names, errs := st.finish()
	t.Logf("%s: %d writes sent, %d failed", what, len(names)+len(errs), len(errs))
	require.Empty(t, errs, "writes failed during the %s", what)
	require.NotEmpty(t, names)
	st.assertDecrypted(t, names, plain)
}

// assertDecrypted checks every named Secret holds plain under app.env.
func (st *stream) assertDecrypted(t *testing.T, names []string, plain []byte) {
	t.Helper()
	for _, n := range names {
		got := &corev1.Secret{}
		require.NoError(t, st.c.Get(context.Background(), client.ObjectKey{Namespace: st.ns, Name: n}, got))
		assert.Equal(t, string(plain), string(got.Data["app.env"]), n)
	}
}

// pointWebhookAt sets the configuration's URL, and its caBundle when
// caBundle is not nil, retrying on conflicts with the webhook's own writes.
func (s *deploySuite) pointWebhookAt(t *testing.T, url string, caBundle []byte) {
	t.Helper()
	ctx := context.Background()
	want, err := testbed.LoadWebhookConfiguration(url, nil)
	require.NoError(t, err)
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		live := want.DeepCopy()
		if err := s.c.Get(ctx, client.ObjectKeyFromObject(want), live); apierrors.IsNotFound(err) {
			cfg := want.DeepCopy()
			for i := range cfg.Webhooks {
				cfg.Webhooks[i].ClientConfig.CABundle = caBundle
			}
			return s.c.Create(ctx, cfg)
		} else if err != nil {
			return err
		}
		for i := range live.Webhooks {
			live.Webhooks[i].ClientConfig.URL = &url
			if caBundle != nil {
				live.Webhooks[i].ClientConfig.CABundle = caBundle
			}
		}
		return s.c.Update(ctx, live)
	}))
}

func (s *deploySuite) tlsSecret(t *testing.T) *corev1.Secret {
	t.Helper()
	sec := &corev1.Secret{}
	require.NoError(t, s.c.Get(context.Background(), client.ObjectKey{Namespace: "sops-webhook", Name: "sops-webhook-tls"}, sec))
	return sec
}

func (s *deploySuite) selfManaged(t *testing.T) {
	ctx := context.Background()
	// The configuration from manifests, with no caBundle and no address
	// yet: the webhook must provide the caBundle.
	s.pointWebhookAt(t, "https://127.0.0.1:1/not-yet", nil)
	wh, err := testbed.StartWebhookWith(ctx, s.bin, testbed.WebhookOptions{
		Config: s.config, WorkDir: filepath.Join(s.work, "self-managed"), SelfManaged: true, Log: verbose(),
		Args: []string{"--certificates=self-managed", "--kubeconfig", s.kubeconfig, "--namespace", "sops-webhook",
			"--tls-hosts", "127.0.0.1", "--cert-check-interval", "200ms"},
	})
	require.NoError(t, err)
	s.selfManagedWebhook = wh
	s.pointWebhookAt(t, wh.URL, nil)

	sec := s.tlsSecret(t)
	for _, k := range []string{"ca.crt", "ca.key", "tls.crt", "tls.key"} {
		require.NotEmpty(t, sec.Data[k], k)
	}
	// What someone who read the Secret now holds.
	exposed, err := certs.ParseCA(sec.Data["ca.crt"], sec.Data["ca.key"])
	require.NoError(t, err)
	live, err := testbed.LoadWebhookConfiguration(wh.URL, nil)
	require.NoError(t, err)
	require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(live), live))
	for _, w := range live.Webhooks {
		assert.Equal(t, string(sec.Data["ca.crt"]), string(w.ClientConfig.CABundle), "caBundle patched from the Secret")
	}
	require.NoError(t, s.cp.WaitForWebhook(ctx, "apps"))

	t.Run("decrypts, and the VAP is silent", func(t *testing.T) {
		require.NoError(t, s.create(ctx, "apps", "self-managed", s.doc, nil))
		(&stream{c: s.c, ns: "apps"}).assertDecrypted(t, []string{"self-managed"}, s.plain)
	})

	t.Run("forced rotation under a stream of creates loses no request", func(t *testing.T) {
		st := startStream(s.c, "apps", "rotation", s.doc, 4)
		time.Sleep(time.Second)
		value := time.Now().UTC().Format(time.RFC3339Nano)
		require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
			sec := s.tlsSecret(t)
			if sec.Annotations == nil {
				sec.Annotations = map[string]string{}
			}
			sec.Annotations[selfcerts.AnnotationRotate] = value
			return s.c.Update(ctx, sec)
		}))
		var newCA *x509.Certificate
		require.Eventually(t, func() bool {
			sec := s.tlsSecret(t)
			if sec.Annotations[selfcerts.AnnotationRotated] != value {
				return false
			}
			newCA = firstCert(t, sec.Data["ca.crt"])
			pool := x509.NewCertPool()
			pool.AddCert(newCA)
			conn, err := tls.Dial("tcp", wh.Addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{wh.ClientCert}})
			if err != nil {
				return false
			}
			conn.Close()
			return true
		}, 30*time.Second, 100*time.Millisecond, "the webhook never served a certificate from the new CA")
		time.Sleep(time.Second)
		st.finishNoneLost(t, "rotation", s.plain)
		require.NoError(t, s.c.Get(ctx, client.ObjectKeyFromObject(live), live))
		assert.Len(t, certs.ParseCertificates(live.Webhooks[0].ClientConfig.CABundle), 2, "new and old CA trusted")
	})
	t.Run("revoking the exposed CA under a stream of creates loses no request, and an impostor of the old CA is refused", func(t *testing.T) {
		s.revokeExposedCA(t, exposed)
	})
	require.NoError(t, wh.Stop())
}

func (s *deploySuite) twoReplicas(t *testing.T) {
	ctx := context.Background()
	bundle, err := testpki.NewTLS([]string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	var replicas []*testbed.Webhook
	for _, name := range []string{"replica-a", "replica-b"} {
		wh, err := testbed.StartWebhookWith(ctx, s.bin, testbed.WebhookOptions{
			Config: s.config, WorkDir: filepath.Join(s.work, name), Certs: bundle, Log: verbose(),
			Args: []string{"--shutdown-delay", "1s"},
		})
		require.NoError(t, err)
		t.Cleanup(func() { _ = wh.Stop() })
		replicas = append(replicas, wh)
	}
	proxy, err := testbed.StartServiceProxy(replicas...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })
	s.pointWebhookAt(t, "https://"+proxy.Addr+"/mutate", bundle.CACert)
	require.NoError(t, s.cp.WaitForWebhook(ctx, "apps"))

	// Concurrent creates make the API server open several connections,
	// which the proxy spreads over both replicas.
	st := startStream(s.c, "apps", "ha", s.doc, 8)
	time.Sleep(time.Second)
	victim, survivor := 0, 1
	if proxy.Conns[1].Load() > proxy.Conns[0].Load() {
		victim, survivor = 1, 0
	}
	require.NotZero(t, proxy.Conns[victim].Load(), "the stopped replica was serving")
	before := proxy.Conns[survivor].Load()
	require.NoError(t, replicas[victim].Stop(), "the replica exits cleanly")
	time.Sleep(2 * time.Second)
	names, errs := st.finish()
	require.Empty(t, errs, "requests lost while a replica stopped")
	t.Logf("%d Secrets created, none lost; connections to the replicas: %d and %d", len(names), proxy.Conns[0].Load(), proxy.Conns[1].Load())
	st.assertDecrypted(t, names, s.plain)
	assert.Greater(t, proxy.Conns[survivor].Load(), before, "the other replica took the stopped one's connections")
}

func firstCert(t *testing.T, pemData []byte) *x509.Certificate {
	t.Helper()
	cs := certs.ParseCertificates(pemData)
	require.NotEmpty(t, cs)
	return cs[0]
}

func verbose() io.Writer {
	if testing.Verbose() {
		return os.Stderr
	}
	return nil
}
