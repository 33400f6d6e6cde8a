package callerauth

import (
	"fmt"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// The metrics' names (docs/reference.md lists them).
const (
	// UnauthenticatedMetric is 1 while the webhook answers callers it
	// cannot authenticate, labelled with the mode.
	UnauthenticatedMetric = "sops_webhook_unauthenticated_callers_served"
	// RefusalsMetric counts TLS clients refused, by reason.
	RefusalsMetric = "sops_webhook_caller_refusals_total"
)

// Metrics are the caller-authentication metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	refusals *prometheus.CounterVec
}

// NewMetrics registers the metrics for mode with reg: the unauthenticated
// gauge, and the refusal counts at zero for every reason.
func NewMetrics(reg prometheus.Registerer, mode string) (*Metrics, error) {
	if !slices.Contains(Modes, mode) {
		return nil, fmt.Errorf("caller authentication mode %q is not one of %v", mode, Modes)
	}
	unauthenticated := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        UnauthenticatedMetric,
		Help:        "1 while the admission endpoint answers callers it cannot authenticate (mode network-policy or none), 0 when it requires the API server's client certificate.",
		ConstLabels: prometheus.Labels{"mode": mode},
	})
	if mode != ModeClientCertificate {
		unauthenticated.Set(1)
	}
	m := &Metrics{refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: RefusalsMetric,
		Help: "TLS clients of the admission endpoint refused during the handshake, by reason (no_certificate, untrusted, name_not_allowed).",
	}, []string{"reason"})}
	for _, c := range []prometheus.Collector{unauthenticated, m.refusals} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range Reasons {
		m.refusals.WithLabelValues(r)
	}
	return m, nil
}

// Refused counts one refusal; it is the refused argument of New.
func (m *Metrics) Refused(reason string) {
	if m == nil || !slices.Contains(Reasons, reason) {
		return
	}
	m.refusals.WithLabelValues(reason).Inc()
}
