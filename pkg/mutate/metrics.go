package mutate

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
)

// Metrics are the handler's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	decryptions *prometheus.CounterVec
}

// NewMetrics creates the handler's metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sops_webhook_admission_requests_total",
			Help: "Admission requests by kind, operation and outcome (skipped, patched, denied, errored).",
		}, []string{"kind", "operation", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sops_webhook_admission_duration_seconds",
			Help:    "Time spent handling an admission request, by kind and outcome.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"kind", "outcome"}),
		decryptions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sops_webhook_decryptions_total",
			Help: "SOPS payloads decrypted, by format and outcome (success, or the reason for refusal).",
		}, []string{"format", "outcome"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.decryptions} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) observeRequest(req admission.Request, resp admission.Response, d time.Duration) {
	if m == nil {
		return
	}
	outcome := "skipped"
	switch {
	case resp.Result != nil && resp.Result.Code >= 500:
		outcome = "errored"
	case resp.Result != nil && resp.Result.Code == 400:
		outcome = "errored"
	case !resp.Allowed:
		outcome = "denied"
	case len(resp.Patches) > 0:
		outcome = "patched"
	}
	m.requests.WithLabelValues(req.Kind.Kind, string(req.Operation), outcome).Inc()
	m.latency.WithLabelValues(req.Kind.Kind, outcome).Observe(d.Seconds())
}

// decryptionOutcome names a reason as a metric label.
var decryptionOutcome = map[decrypt.Reason]string{
	"":                        "success",
	decrypt.ReasonTooLarge:    "too_large",
	decrypt.ReasonMalformed:   "malformed",
	decrypt.ReasonNoKey:       "no_key",
	decrypt.ReasonCorrupt:     "corrupt",
	decrypt.ReasonMAC:         "mac_mismatch",
	decrypt.ReasonNoMAC:       "no_mac",
	decrypt.ReasonUnsupported: "unsupported",
	decrypt.ReasonNoIndex:     "no_index",
	decrypt.ReasonTimeout:     "timeout",
	decrypt.ReasonInternal:    "internal",
}

func (m *Metrics) observeDecryption(f decrypt.Format, r decrypt.Reason) {
	if m == nil {
		return
	}
	outcome, ok := decryptionOutcome[r]
	if !ok {
		outcome = "internal"
	}
	m.decryptions.WithLabelValues(string(f), outcome).Inc()
}
