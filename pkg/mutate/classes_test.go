package mutate_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/getsops/sops/v3/keyservice"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/metrics"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// TestErrorClasses sends a document through the handler once per reason in
// decrypt's table: the request's faults are denied (403), the webhook's or a
// key service's are retryable errors (503, or 500 for an internal error),
// and each is counted under its own outcome.
func TestErrorClasses(t *testing.T) {
	env := sopskit.SopsEncrypt(t, []byte("A=1\n"), "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{sopskit.NewAgeKey(t, false)}})
	req := admission.Request{AdmissionRequest: request(t, "Secret", admissionv1.Create, secret("app", map[string][]byte{"app.env": env}))}
	reasons := decrypt.Reasons()
	require.NotEmpty(t, reasons)
	for _, r := range reasons {
		t.Run(r.Label(), func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m, err := metrics.New(reg)
			require.NoError(t, err)
			h := mutate.NewHandler(static(mutate.Engine{Decryptor: &fakeDecryptor{fail: r}}), mutate.WithMetrics(m))
			resp := h.Handle(context.Background(), req)
			require.False(t, resp.Allowed)
			msg := messageOf(resp)
			assert.Contains(t, msg, "Secret team-a/app field data.app.env")
			assert.Contains(t, msg, string(r))

			wantCode, wantOutcome := 403, metrics.OutcomeDenied
			if r.Retryable() {
				wantCode, wantOutcome = 503, metrics.OutcomeErrored
				if r == decrypt.ReasonInternal {
					wantCode = 500
				}
				assert.Contains(t, msg, "retry it")
				assert.Nil(t, resp.Result.Details, "no Retry-After: clients would retry silently for about 40 s")
			} else {
				assert.NotContains(t, msg, "retry")
			}
			assert.EqualValues(t, wantCode, resp.Result.Code, msg)
			assert.Equal(t, 1.0, counter(t, reg, "sops_webhook_decryptions_total", map[string]string{"format": "dotenv", "outcome": r.Label()}))
			assert.Equal(t, 1.0, counter(t, reg, "sops_webhook_admission_requests_total", map[string]string{"kind": "Secret", "operation": "CREATE", "outcome": wantOutcome}))
		})
	}
}

// counter returns the value of the series of name with exactly labels: a
// counter's or a gauge's.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, s := range mf.GetMetric() {
			if len(s.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range s.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue series
				}
			}
			if s.Gauge != nil {
				return s.GetGauge().GetValue()
			}
			return s.GetCounter().GetValue()
		}
	}
	return 0
}

// downSource is a configured key whose service does not answer.
type downSource struct{}

func (downSource) Name() string { return "remote" }
func (downSource) Unwrap(context.Context, *keyservice.Key, []byte) ([]byte, error) {
	return nil, errors.New("stand-in key service: no answer within 3s")
}

// undecided is a policy whose namespace lookup fails.
type undecided struct{}

func (undecided) Access(namespace, kind string, _ authenticationv1.UserInfo) keysource.Access {
	return undecidedAccess{}
}

type undecidedAccess struct{}

func (undecidedAccess) Allowed(_ context.Context, key string) error {
	return fmt.Errorf("key %q: cannot read the labels of namespace: %w", key, keysource.ErrCheckFailed)
}

// TestRetryableThroughTheRealDecryptor drives the two dependency failures
// the real decryptor meets, a key service that is down and a policy that
// cannot decide, and checks they come back as retryable 503s naming the key
// and never as "not granted".
func TestRetryableThroughTheRealDecryptor(t *testing.T) {
	key := sopskit.NewAgeKey(t, false)
	env := sopskit.SopsEncrypt(t, []byte("A=classes-s3cr3t\n"), "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{key}})
	req := admission.Request{AdmissionRequest: request(t, "Secret", admissionv1.Create, secret("app", map[string][]byte{"app.env": env}))}
	age, err := keysource.LoadAge("k", key.IdentityFile)
	require.NoError(t, err)

	tests := []struct {
		name    string
		sources []keysource.Source
		policy  mutate.Policy
		want    decrypt.Reason
		names   string
	}{
		{"key service down", []keysource.Source{downSource{}}, nil, decrypt.ReasonUnavailable, `key "remote": stand-in key service`},
		{"namespace lookup failed", []keysource.Source{age}, undecided{}, decrypt.ReasonPolicyCheck, `key "k": cannot read the labels`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ring, err := keysource.NewRing(tt.sources...)
			require.NoError(t, err)
			h := mutate.NewHandler(static(mutate.Engine{Decryptor: decrypt.New(ring), Policy: tt.policy}))
			resp := h.Handle(context.Background(), req)
			require.False(t, resp.Allowed)
			msg := messageOf(resp)
			assert.EqualValues(t, 503, resp.Result.Code, msg)
			assert.Contains(t, msg, string(tt.want))
			assert.Contains(t, msg, tt.names)
			assert.NotContains(t, msg, string(decrypt.ReasonNotGranted))
			assert.False(t, strings.Contains(msg, "classes-s3cr3t"))
		})
	}
}
