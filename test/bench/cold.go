package main

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"time"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/test/testbed"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// coldRow is one format and size on the cold path: what a document the
// webhook has not seen before costs (no result cache, the data key
// unwrapped), against `sops decrypt` on the same document.
type coldRow struct {
	format, size string
	bytes        int
	perDoc       time.Duration
	allocPerByte float64
	cli          time.Duration
}

// coldSizes are the encrypted sizes of the cold-path table, the largest
// just under the document limit.
var coldSizes = []struct {
	name string
	n    int
}{{"1 KiB", 1 << 10}, {"64 KiB", 64 << 10}, {"1 MiB", 1<<20 - 48<<10}}

// coldPath measures every format and size in-process, one document at a
// time, and with the sops CLI (median of three runs).
func coldPath(tb *testbed.CommandTB, key sopskit.AgeKey, quick bool) ([]coldRow, error) {
	src, err := keysource.LoadAge("bench", key.IdentityFile)
	if err != nil {
		return nil, err
	}
	ring, err := keysource.NewRing(src)
	if err != nil {
		return nil, err
	}
	d := decrypt.New(ring) // no result cache, no data-key cache
	r := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	var rows []coldRow
	for _, format := range []string{"yaml", "json", "dotenv", "ini", "binary"} {
		for _, size := range coldSizes {
			enc := sopskit.SopsEncrypt(tb, sopskit.PlainOfSize(format, int(float64(size.n)/sopskit.Expansion[format])), format, r)
			f := decrypt.Detect(enc, sopskit.DocumentFiles[format])
			n := max(3, (4<<20)/len(enc))
			if quick {
				n = 2
			}
			// One warm-up, then n measured decryptions.
			if _, err := d.Document(context.Background(), enc, f, nil); err != nil {
				return nil, fmt.Errorf("%s %s: %w", format, size.name, err)
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			for range n {
				if _, err := d.Document(context.Background(), enc, f, nil); err != nil {
					return nil, err
				}
			}
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			var cli []time.Duration
			for range 3 {
				s := time.Now()
				sopskit.SopsDecrypt(tb, enc, format, r)
				cli = append(cli, time.Since(s))
			}
			slices.Sort(cli)
			rows = append(rows, coldRow{format: format, size: size.name, bytes: len(enc), perDoc: took / time.Duration(n),
				allocPerByte: float64(after.TotalAlloc-before.TotalAlloc) / float64(n) / float64(len(enc)), cli: cli[1]})
			step("cold path: %s %s: %s a document, %.1f bytes allocated a byte", format, size.name, (took / time.Duration(n)).Round(time.Microsecond), rows[len(rows)-1].allocPerByte)
		}
	}
	return rows, nil
}
