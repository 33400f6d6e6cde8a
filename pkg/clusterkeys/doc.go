// Package clusterkeys keeps the age identities the webhook generates for
// itself, so that no private key exists outside the cluster.
//
// A generated key has generations. Each generation is one age identity,
// X25519 or the hybrid post-quantum type, born in the webhook's memory and
// stored in exactly one Secret in the webhook's namespace, together with a
// public index (generations.json: each generation's recipient, creation
// time and state). Nothing else holds the private key: the package logs
// nothing, and its errors name the Secret, the key and the reason.
//
// Store.Sync reads that Secret and, for a configured key that has no
// generation yet, adds one. Replicas that start together agree through the
// API server: the first write is a create, which only one replica wins,
// and later writes are updates at the resourceVersion that was read, so a
// replica that loses reads the winner's identity and uses it.
//
// Publish writes the public half (recipients, states, the policy's grants
// and .sops.yaml creation rules) to a ConfigMap every authenticated user
// may read.
package clusterkeys
