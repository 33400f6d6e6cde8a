package mutate_test

import (
	"context"
	"sync/atomic"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
)

// static returns an Engine source that always returns e; the webhook's own
// source is its config reloader.
func static(e mutate.Engine) func() mutate.Engine { return func() mutate.Engine { return e } }

// fakeDecryptor is a Decryptor that counts the documents it is asked for
// and decrypts each to the same dotenv text, or fails it with reason fail
// when set. It parses no values index and opens no token.
type fakeDecryptor struct {
	fail  decrypt.Reason
	calls atomic.Int64
}

func (f *fakeDecryptor) Document(context.Context, []byte, decrypt.Format, keysource.Access) (decrypt.Result, error) {
	f.calls.Add(1)
	if f.fail != "" {
		return decrypt.Result{}, &decrypt.Error{Reason: f.fail, Detail: "a detail"}
	}
	return decrypt.Result{Plaintext: []byte("A=1\n"), Format: decrypt.FormatDotenv, Keys: []string{"k"}}, nil
}
func (f *fakeDecryptor) Tokens(*decrypt.Index, keysource.Access) *decrypt.Tokens { return nil }
func (f *fakeDecryptor) Index([]byte) (*decrypt.Index, error)                    { return nil, nil }

// Rewrap answers every file with "rewrapped", opened by key k.
func (f *fakeDecryptor) Rewrap(context.Context, []byte, decrypt.Format, keysource.Access, decrypt.RewrapTargets) (decrypt.Rewrapped, error) {
	f.calls.Add(1)
	return decrypt.Rewrapped{File: []byte("rewrapped"), Keys: []string{"k@1"}, Added: []string{"age1new"}}, nil
}
