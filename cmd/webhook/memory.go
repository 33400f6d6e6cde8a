package main

import (
	"fmt"

	"github.com/sops-webhook/sops-webhook/pkg/budget"
)

// memoryLimitEnv is the environment variable the manifests fill from the
// Downward API (resourceFieldRef limits.memory).
const memoryLimitEnv = "SOPS_WEBHOOK_MEMORY_LIMIT"

// memoryPlan is what the webhook does with its memory limit.
type memoryPlan struct {
	budget.Sizes
	// source says where the limit came from: a flag, the environment, a
	// cgroup file, or "none".
	source string
	// limited is false when no limit was found: the budgets are sized for
	// budget.DefaultMemoryLimit and GOMEMLIMIT is left alone.
	limited bool
}

// planMemory finds the memory limit (--memory-limit, else
// $SOPS_WEBHOOK_MEMORY_LIMIT, else the cgroup) and sizes GOMEMLIMIT and the
// budgets for it; --decrypt-budget and --body-budget override the budgets.
func planMemory(m memoryOptions) (memoryPlan, error) {
	limit, source := m.limit, "--memory-limit"
	if limit == 0 {
		var err error
		if limit, source, err = budget.MemoryLimit(memoryLimitEnv); err != nil {
			return memoryPlan{}, fmt.Errorf("memory limit: %w", err)
		}
	}
	p := memoryPlan{source: source, limited: limit > 0}
	if !p.limited {
		limit, p.source = budget.DefaultMemoryLimit, "none"
	}
	p.Sizes = budget.ForLimit(limit)
	if m.decrypt > 0 {
		p.Decrypt = m.decrypt
	}
	if m.bodies > 0 {
		p.Bodies = m.bodies
	}
	if m.connections > 0 {
		p.Connections = m.connections
	}
	return p, nil
}
