// Package keysource holds the webhook's configured decryption keys and offers
// them to sops through a key service of our own.
//
// Keys are parsed once, when the webhook starts, into a Ring. Each decryption
// asks the Ring for a Client: a sops keyservice.KeyServiceClient that answers
// only from the Ring's keys, carries the caller's context (sops itself passes
// context.Background), and records which configured key unwrapped the data key.
//
// Nothing here consults sops' own key lookups: no environment variables, no
// ~/.config/sops, no gpg binary, no age plugins, and no address, role or
// profile taken from a payload's metadata. A Source is authorised by what it
// actually unwraps, never by the recipient a payload claims.
package keysource
