package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
)

// keyMetrics count what happens to keys and config.
type keyMetrics struct {
	reloads *prometheus.CounterVec
	cache   *prometheus.CounterVec
	unwraps *prometheus.CounterVec
}

func newKeyMetrics(reg prometheus.Registerer) (*keyMetrics, error) {
	m := &keyMetrics{
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
	}
	for _, c := range []prometheus.Collector{m.reloads, m.cache, m.unwraps} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *keyMetrics) reloaded(ok bool) {
	m.reloads.WithLabelValues(map[bool]string{true: "success", false: "failure"}[ok]).Inc()
}

func (m *keyMetrics) stats() keysource.Stats {
	return keysource.Stats{
		CacheLookup: func(hit bool) { m.cache.WithLabelValues(map[bool]string{true: "hit", false: "miss"}[hit]).Inc() },
		Unwrap: func(key string, opened bool) {
			m.unwraps.WithLabelValues(key, map[bool]string{true: "opened", false: "not_opened"}[opened]).Inc()
		},
	}
}
