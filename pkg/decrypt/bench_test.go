package decrypt_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// benchSizes are the encrypted document sizes benchmarked, up to just under
// MaxDocumentSize.
var benchSizes = []struct {
	name string
	n    int
}{{"1KiB", 1 << 10}, {"64KiB", 64 << 10}, {"1MiB", 1<<20 - 48<<10}}

// benchDecryptors are a Decryptor that unwraps the data key every time
// (cold) and one that takes it from the data-key cache (warm).
func benchDecryptors(b *testing.B, key sopskit.AgeKey) []struct {
	name string
	d    *decrypt.Decryptor
} {
	src, err := keysource.LoadAge("k", key.IdentityFile)
	if err != nil {
		b.Fatal(err)
	}
	warmRing, err := keysource.NewRingWith([]keysource.Source{src}, []keysource.RingOption{keysource.WithCache(16, time.Hour, nil)})
	if err != nil {
		b.Fatal(err)
	}
	return []struct {
		name string
		d    *decrypt.Decryptor
	}{{"cold", newDecryptor(b, src)}, {"warm", decrypt.New(warmRing)}}
}

func BenchmarkDetect(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10, 1 << 20} {
		line := []byte("no sops content here, just a config file line\n")
		plain := bytes.Repeat(line, size/len(line)+1)[:size]
		b.Run(fmt.Sprintf("no-marker/%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if decrypt.HasMarker(plain) || decrypt.MayHoldBase64Marker(plain) {
					b.Fatal("marker found")
				}
			}
		})
	}
}

func BenchmarkDocument(b *testing.B) {
	key := sopskit.NewAgeKey(b, false)
	r := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	decryptors := benchDecryptors(b, key)
	for _, format := range []string{"yaml", "json", "dotenv", "ini", "binary"} {
		for _, size := range benchSizes {
			enc := sopskit.SopsEncrypt(b, sopskit.PlainOfSize(format, int(float64(size.n)/sopskit.Expansion[format])), format, r)
			if len(enc) > decrypt.MaxDocumentSize {
				b.Fatalf("%s %s: %d bytes encrypted, over the limit", format, size.name, len(enc))
			}
			f := decrypt.Detect(enc, sopskit.DocumentFiles[format])
			for _, c := range decryptors {
				b.Run(format+"/"+size.name+"/"+c.name, func(b *testing.B) {
					b.SetBytes(int64(len(enc)))
					b.ReportAllocs()
					for b.Loop() {
						if _, err := c.d.Document(context.Background(), enc, f, nil); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

func BenchmarkTokens(b *testing.B) {
	key := sopskit.NewAgeKey(b, false)
	decryptors := benchDecryptors(b, key)
	for _, n := range []int{1, 10, 100, 1000} {
		var plain strings.Builder
		for i := range n {
			fmt.Fprintf(&plain, "k%04d: secret-value-%04d\n", i, i)
		}
		enc := sopskit.SopsEncrypt(b, []byte(plain.String()), "yaml", sopskit.Recipients{Age: []sopskit.AgeKey{key}})
		idx, err := decrypt.ParseIndex([]byte(sopskit.ValuesIndex(b, enc)))
		if err != nil {
			b.Fatal(err)
		}
		var value strings.Builder
		for _, l := range sopskit.ValuesLeaves(b, enc) {
			fmt.Fprintf(&value, "%s\n", l.Value)
		}
		v := []byte(value.String())
		for _, c := range decryptors {
			b.Run(fmt.Sprintf("%d/%s", n, c.name), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := c.d.Tokens(idx, nil).Decrypt(context.Background(), v); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
