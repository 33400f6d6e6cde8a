package mutate_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sops-webhook/sops-webhook/pkg/metrics"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
)

// TestLabelsFromFixedSets sends reviews with made-up kinds and operations,
// with and without SOPS content, and checks that the request metrics gain
// no series for them: kind and operation labels come from fixed sets.
func TestLabelsFromFixedSets(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	require.NoError(t, err)
	srv := mutate.NewServer(goldenHandler(t, mutate.WithMetrics(m)), mutate.Gate{})
	for i := range 50 {
		for _, golden := range []string{"secret-documents", "secret-no-sops"} {
			body := goldenRequest(t, golden, func(s string) string {
				s = strings.Replace(s, `"kind": "Secret"`, fmt.Sprintf(`"kind": "Made-Up-%d"`, i), 1)
				return strings.Replace(s, `"operation": "CREATE"`, fmt.Sprintf(`"operation": "OP-%d"`, i), 1)
			})
			req := httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			srv.ServeHTTP(httptest.NewRecorder(), req)
		}
	}
	mfs, err := reg.Gather()
	require.NoError(t, err)
	seen := 0
	for _, mf := range mfs {
		if mf.GetName() != "sops_webhook_admission_requests_total" && mf.GetName() != "sops_webhook_admission_duration_seconds" {
			continue
		}
		for _, s := range mf.GetMetric() {
			seen++
			for _, l := range s.GetLabel() {
				switch l.GetName() {
				case "kind":
					assert.True(t, slices.Contains([]string{"Secret", "ConfigMap", metrics.LabelOther}, l.GetValue()), "kind %q", l.GetValue())
				case "operation":
					assert.True(t, slices.Contains([]string{"CREATE", "UPDATE", metrics.LabelOther}, l.GetValue()), "operation %q", l.GetValue())
				}
			}
		}
	}
	require.Positive(t, seen, "the requests were counted")
	assert.LessOrEqual(t, seen, 2*4, "100 made-up reviews: at most one series per outcome in each family")
}
