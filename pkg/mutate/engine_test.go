package mutate_test

import "github.com/sops-webhook/sops-webhook/pkg/mutate"

// static returns an Engine source that always returns e; the webhook's own
// source is its config reloader.
func static(e mutate.Engine) func() mutate.Engine { return func() mutate.Engine { return e } }
