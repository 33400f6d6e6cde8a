package store

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/getsops/sops/v3"
	sopsaes "github.com/getsops/sops/v3/aes"
	"github.com/stretchr/testify/require"
)

// cipherKey is the data key of the cipher tests.
var cipherKey = []byte("0123456789abcdef0123456789abcdef")

// sopsToken encrypts v with sops' own cipher.
func sopsToken(t testing.TB, v any, ad string) string {
	t.Helper()
	tok, err := sopsaes.NewCipher().Encrypt(v, cipherKey, ad)
	require.NoError(t, err)
	return tok
}

// decryptSafely calls decrypt and turns a panic into an outcome.
func decryptSafely(decrypt func(string, []byte, string) (any, error), tok string, ad string) (v any, err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			v, err, panicked = nil, nil, true
		}
	}()
	v, err = decrypt(tok, cipherKey, ad)
	return v, err, false
}

// FuzzDocCipher is the differential test of Cipher against sops' own
// cipher: for any value and authenticated path, both return the same
// plaintext of the same type, or both fail, or both panic.
func FuzzDocCipher(f *testing.F) {
	when := time.Date(2026, 12, 2, 15, 4, 5, 6, time.UTC)
	for _, v := range []any{"secret", "", "héllo ☃\nline", 42, -7, 3.25, true, false, when, sops.Comment{Value: " c"}} {
		tok := sopsToken(f, v, "a:b:")
		f.Add(tok, "a:b:")
		f.Add(tok, "a:c:")
		if tok != "" { // sops writes nothing for an empty value
			f.Add(tok+"trailing", "a:b:")
			f.Add(tok[:len(tok)-1], "a:b:")
		}
	}
	// The type is not authenticated; sops cannot write type:bytes (it
	// panics) and panics when it reads it.
	f.Add(strings.Replace(sopsToken(f, "raw", "a:"), ",type:str]", ",type:bytes]", 1), "a:")
	f.Add(strings.Replace(sopsToken(f, "raw", "a:"), ",type:str]", ",type:int]", 1), "a:")
	f.Add("ENC[AES256_GCM,data:,iv:AAAAAAAAAAAAAAAA,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]", "")
	f.Add("ENC[AES256_GCM,data:AA==,iv:AA==,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]", "")
	f.Add("ENC[AES256_GCM,data:a,b,iv:c,tag:d,type:e]", "")
	f.Add("not a token", "")
	f.Fuzz(func(t *testing.T, tok, ad string) {
		want, wantErr, wantPanic := decryptSafely(sopsaes.NewCipher().Decrypt, tok, ad)
		got, gotErr, gotPanic := decryptSafely(NewCipher(cipherKey).Decrypt, tok, ad)
		if wantPanic != gotPanic {
			t.Fatalf("sops panicked: %v, Cipher panicked: %v", wantPanic, gotPanic)
		}
		if (wantErr != nil) != (gotErr != nil) {
			t.Fatalf("sops error %v, Cipher error %v", wantErr, gotErr)
		}
		if wantErr == nil && !reflect.DeepEqual(want, got) {
			t.Fatalf("sops returned %#v, Cipher %#v", want, got)
		}
	})
}

// TestDocCipherSharesItsGCM checks that decrypting many values of a
// document allocates a small fraction of what sops' cipher does.
func TestDocCipherSharesItsGCM(t *testing.T) {
	var toks []string
	for i := range 1000 {
		toks = append(toks, sopsToken(t, fmt.Sprintf("value-%04d", i), fmt.Sprintf("k%d:", i)))
	}
	run := func(decrypt func(string, []byte, string) (any, error)) uint64 {
		return allocated(func() {
			for i, tok := range toks {
				v, err := decrypt(tok, cipherKey, fmt.Sprintf("k%d:", i))
				require.NoError(t, err)
				require.Equal(t, fmt.Sprintf("value-%04d", i), v)
			}
		})
	}
	theirs := run(sopsaes.NewCipher().Decrypt)
	ours := run(NewCipher(cipherKey).Decrypt)
	t.Logf("1,000 values: sops' cipher %d bytes allocated, Cipher %d (%.0f %%)", theirs, ours, 100*float64(ours)/float64(theirs))
	require.Less(t, float64(ours), float64(theirs)/3, "Cipher does not allocate a third of sops' cipher")
}
