package decrypt_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// FuzzDetect checks that detection never panics, that a value without the
// marker is always FormatNone, and that the base64 screen never misses a
// value that holds the marker.
func FuzzDetect(f *testing.F) {
	for _, s := range []string{
		"", "plain", "sops:\n  mac: ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]\n",
		`{"data":"ENC[AES256_GCM,data:x]","sops":{"mac":"x"}}`,
		"A=ENC[AES256_GCM,data:x]\nsops_mac=ENC[AES256_GCM,data:y]\n",
		"[sops]\nmac = ENC[AES256_GCM,data:x]\n", "\ufeff{\"sops\"",
	} {
		f.Add([]byte(s), "app.env")
	}
	f.Fuzz(func(t *testing.T, value []byte, name string) {
		got := decrypt.Detect(value, name)
		has := decrypt.HasMarker(value)
		if !has && got != decrypt.FormatNone {
			t.Fatalf("no marker but detected %q", got)
		}
		if has && got == decrypt.FormatNone {
			t.Fatalf("marker but FormatNone")
		}
		if has && !decrypt.MayHoldBase64Marker([]byte(base64.StdEncoding.EncodeToString(value))) {
			t.Fatalf("base64 screen missed a marker")
		}
	})
}

// FuzzDocument decrypts arbitrary values with a real key, seeded with real
// sops documents in every format. It must never panic, and every error must
// be a value-free *decrypt.Error.
func FuzzDocument(f *testing.F) {
	key := sopskit.NewAgeKey(f, false)
	r := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	for format, s := range samples {
		f.Add(sopskit.SopsEncrypt(f, s.plain, format, r), s.file)
	}
	src, err := keysource.LoadAge("fuzz", key.IdentityFile)
	if err != nil {
		f.Fatal(err)
	}
	d := newDecryptor(f, src)
	f.Fuzz(func(t *testing.T, value []byte, name string) {
		format := decrypt.Detect(value, name)
		if !format.IsDocument() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res, err := d.Document(ctx, value, format, nil)
		if err != nil {
			var e *decrypt.Error
			if !errors.As(err, &e) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			if len(value) > 16 && bytes.Contains([]byte(err.Error()), value) {
				t.Fatalf("error quotes its input")
			}
			return
		}
		if res.Format != format || len(res.Keys) == 0 {
			t.Fatalf("success without format or key: %+v", res)
		}
	})
}

// FuzzTokens decrypts arbitrary values and indexes with a real key, seeded
// with a values file the sops CLI encrypted and its real index. It must never
// panic, every error must be a value-free *decrypt.Error, and a success must
// leave no token behind.
func FuzzTokens(f *testing.F) {
	key := sopskit.NewAgeKey(f, false)
	enc := sopskit.SopsEncrypt(f, []byte(valuesPlain), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{key}})
	index := sopskit.ValuesIndex(f, enc)
	for _, l := range sopskit.ValuesLeaves(f, enc) {
		if s, ok := l.Value.(string); ok {
			f.Add([]byte("url: x://"+s+"@host\n"), []byte(index))
		}
	}
	f.Add([]byte("ENC[AES256_GCM,data:,iv:,tag:,type:]"), []byte(`{"sops":{},"paths":{}}`))
	src, err := keysource.LoadAge("fuzz", key.IdentityFile)
	if err != nil {
		f.Fatal(err)
	}
	d := newDecryptor(f, src)
	f.Fuzz(func(t *testing.T, value, index []byte) {
		idx, err := decrypt.ParseIndex(index)
		if err != nil {
			var e *decrypt.Error
			if !errors.As(err, &e) {
				t.Fatalf("index error of type %T: %v", err, err)
			}
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := d.Tokens(idx, nil).Decrypt(ctx, value)
		if err != nil {
			var e *decrypt.Error
			if !errors.As(err, &e) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			if bytes.Contains([]byte(err.Error()), []byte("s3cr3t")) {
				t.Fatalf("error holds plaintext: %v", err)
			}
			return
		}
		if decrypt.HasMarker(out) {
			t.Fatalf("success left a token behind")
		}
	})
}
