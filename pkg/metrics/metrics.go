package metrics

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
)

// Metrics are the webhook's Prometheus metrics but caller authentication's
// (package callerauth): admission requests, decryptions, key unwraps, the
// data-key cache, config reloads, the memory budget's lanes and the
// admission endpoint's connections. A nil *Metrics records nothing.
type Metrics struct {
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	decryptions *prometheus.CounterVec
	reloads     *prometheus.CounterVec
	cache       *prometheus.CounterVec
	unwraps     *prometheus.CounterVec
	busy        *prometheus.CounterVec
	// lastUsed and retired are by generated key and generation: label
	// values the config and the generated keys' Secret fix, at most
	// clusterkeys.MaxStoredGenerations.
	lastUsed *prometheus.GaugeVec
	retired  *prometheus.CounterVec
	reg      prometheus.Registerer
}

// The outcome labels of sops_webhook_admission_requests_total.
const (
	OutcomeSkipped = "skipped"
	OutcomePatched = "patched"
	OutcomeDenied  = "denied"
	OutcomeErrored = "errored"
)

// New creates the webhook's metrics and registers them with reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sops_webhook_admission_requests_total",
			Help: "Admission requests by kind (Secret, ConfigMap, other), operation (CREATE, UPDATE, other) and outcome (skipped, patched, denied: the request's fault, errored: the webhook's or a key service's, retryable).",
		}, []string{"kind", "operation", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sops_webhook_admission_duration_seconds",
			Help:    "Time spent handling an admission request, by kind (Secret, ConfigMap, other) and outcome.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"kind", "outcome"}),
		decryptions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sops_webhook_decryptions_total",
			Help: "SOPS payloads by format and outcome: success, or the snake_case label of the reason it failed.",
		}, []string{"format", "outcome"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sops_webhook_config_reloads_total",
			Help: "Config reloads by result (success, failure: the previous config stays in use).",
		}, []string{"result"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sops_webhook_data_key_cache_lookups_total",
			Help: "Data-key cache lookups by result (hit, miss).",
		}, []string{"result"}),
		unwraps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sops_webhook_key_unwraps_total",
			Help: "Data-key unwraps asked of each configured key (remote calls for KMS and Vault keys), by result (opened, not_opened).",
		}, []string{"key", "result"}),
		busy: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sops_webhook_budget_refusals_total",
			Help: "Requests refused, retryably, because their lane of the memory budget had no room in time: small and large (decryption), bodies (reading large request bodies), heavy (handling large requests once read).",
		}, []string{"lane"}),
		lastUsed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sops_webhook_key_generation_last_used_timestamp_seconds",
			Help: "When a generation of a generated key last opened a data key (Unix time), by key and generation; absent until it has.",
		}, []string{"key", "generation"}),
		retired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sops_webhook_retired_generation_requests_total",
			Help: "Payloads refused because they are encrypted for a retired generation of a generated key, by key and generation: files still to rewrap.",
		}, []string{"key", "generation"}),
		reg: reg,
	}
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.decryptions, m.reloads, m.cache, m.unwraps, m.busy, m.lastUsed, m.retired} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Request counts an admission request of kind and operation, as the API
// server named them, answered with outcome (an Outcome constant) after d.
func (m *Metrics) Request(kind, operation, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	kind = kindLabel(kind)
	m.requests.WithLabelValues(kind, operationLabel(operation), outcome).Inc()
	m.latency.WithLabelValues(kind, outcome).Observe(d.Seconds())
}

// LabelOther is the kind or operation label of any value outside the fixed
// sets: labels come from fixed sets whatever a review says, since a series
// per distinct string would let requests grow memory and scrapes without
// bound.
const LabelOther = "other"

// kindLabel is Secret, ConfigMap or LabelOther.
func kindLabel(kind string) string {
	switch kind {
	case "Secret", "ConfigMap":
		return kind
	}
	return LabelOther
}

// operationLabel is CREATE, UPDATE or LabelOther.
func operationLabel(op string) string {
	switch op {
	case "CREATE", "UPDATE":
		return op
	}
	return LabelOther
}

// decryptionOutcome names a reason as an outcome label: the reason's own
// label, or success for "".
func decryptionOutcome(r decrypt.Reason) string {
	if r == "" {
		return decrypt.SuccessLabel
	}
	return r.Label()
}

// Decryption counts a SOPS payload of format f that failed for r, or was
// decrypted when r is "".
func (m *Metrics) Decryption(f decrypt.Format, r decrypt.Reason) {
	if m == nil {
		return
	}
	m.decryptions.WithLabelValues(string(f), decryptionOutcome(r)).Inc()
}

// Busy counts a refusal by a budget lane, when err is a
// *budget.BusyError; other errors are ignored.
func (m *Metrics) Busy(err error) {
	var busy *budget.BusyError
	if m == nil || !errors.As(err, &busy) {
		return
	}
	m.busy.WithLabelValues(busy.Lane).Inc()
}

// WatchLanes exports each lane's capacity and the bytes it has admitted, as
// sops_webhook_budget_capacity_bytes and sops_webhook_budget_in_flight_bytes
// labelled with the lane's name, and starts its refusal count at zero.
func (m *Metrics) WatchLanes(lanes ...*budget.Lane) error {
	if m == nil {
		return nil
	}
	for _, l := range lanes {
		labels := prometheus.Labels{"lane": l.Name()}
		capacity := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sops_webhook_budget_capacity_bytes", ConstLabels: labels,
			Help: "Bytes a lane of the memory budget admits at once.",
		}, func() float64 { return float64(l.Capacity()) })
		inFlight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sops_webhook_budget_in_flight_bytes", ConstLabels: labels,
			Help: "Bytes a lane of the memory budget has admitted and not yet released.",
		}, func() float64 { return float64(l.InFlight()) })
		for _, c := range []prometheus.Collector{capacity, inFlight} {
			if err := m.reg.Register(c); err != nil {
				return err
			}
		}
		m.busy.WithLabelValues(l.Name())
	}
	return nil
}

// WatchConnections exports the admission endpoint's connection cap, its
// open connections and those closed for the cap, as
// sops_webhook_connections_max, sops_webhook_connections_open and
// sops_webhook_connections_refused_total.
func (m *Metrics) WatchConnections(c *budget.ConnectionLimiter) error {
	if m == nil {
		return nil
	}
	for _, col := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sops_webhook_connections_max",
			Help: "Connections the admission endpoint holds open at most (--max-connections).",
		}, func() float64 { return float64(c.Max()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sops_webhook_connections_open",
			Help: "Connections the admission endpoint holds open.",
		}, func() float64 { return float64(c.Open()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sops_webhook_connections_refused_total",
			Help: "Connections closed unread because the admission endpoint held its most.",
		}, func() float64 { return float64(c.Refused()) }),
	} {
		if err := m.reg.Register(col); err != nil {
			return err
		}
	}
	return nil
}

// Reloaded counts a config reload attempt.
func (m *Metrics) Reloaded(ok bool) {
	if m == nil {
		return
	}
	m.reloads.WithLabelValues(map[bool]string{true: "success", false: "failure"}[ok]).Inc()
}

// KeyStats returns the keysource.Stats that count cache lookups and unwraps.
func (m *Metrics) KeyStats() keysource.Stats {
	if m == nil {
		return keysource.Stats{}
	}
	return keysource.Stats{
		CacheLookup: func(hit bool) { m.cache.WithLabelValues(map[bool]string{true: "hit", false: "miss"}[hit]).Inc() },
		Unwrap: func(key string, opened bool) {
			m.unwraps.WithLabelValues(key, map[bool]string{true: "opened", false: "not_opened"}[opened]).Inc()
		},
		Generation: func(key string, generation int, retired bool) {
			if retired {
				m.retired.WithLabelValues(key, strconv.Itoa(generation)).Inc()
				return
			}
			m.lastUsed.WithLabelValues(key, strconv.Itoa(generation)).SetToCurrentTime()
		},
	}
}
