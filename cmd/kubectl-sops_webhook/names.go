package main

// Public names the plugin shares with the webhook (docs/reference.md §1).
// They are package mutate's; the plugin repeats them so that it does not
// link the webhook's decryption code, and TestNamesMatchTheWebhook keeps
// them equal.
const (
	annotationKeys    = "sops-webhook.io/keys"
	annotationRewrap  = "sops-webhook.io/rewrap"
	rewrapDropRetired = "drop-retired"
)
