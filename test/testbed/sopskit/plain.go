package sopskit

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"strings"
)

// Expansion is how much sops grows a plaintext of each format (measured:
// every value becomes an ENC[...] token; binary is base64 in JSON).
var Expansion = map[string]float64{"yaml": 2.8, "json": 2.8, "dotenv": 2.85, "ini": 2.8, "binary": 1.34}

// DocumentFiles names a file of each format, as Detect's hint.
var DocumentFiles = map[string]string{"yaml": "a.yaml", "json": "a.json", "dotenv": "a.env", "ini": "a.ini", "binary": "a.bin"}

// PlainOfSize returns a plaintext of about n bytes in format ("yaml",
// "json", "dotenv", "ini" or "binary"): flat keys with 60-byte values, INI
// in sections of 64 keys, binary random.
func PlainOfSize(format string, n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		v := fmt.Sprintf("value-%06d-%s", i, strings.Repeat("x", 48))
		switch format {
		case "yaml":
			fmt.Fprintf(&b, "key%06d: %s\n", i, v)
		case "json":
			if i == 0 {
				b.WriteString("{")
			} else {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, "%q:%q", fmt.Sprintf("key%06d", i), v)
		case "dotenv":
			fmt.Fprintf(&b, "KEY%06d=%s\n", i, v)
		case "ini":
			if i%64 == 0 {
				fmt.Fprintf(&b, "[section%d]\n", i/64)
			}
			fmt.Fprintf(&b, "key%06d = %s\n", i, v)
		case "binary":
			chunk := make([]byte, 4096)
			_, _ = rand.Read(chunk)
			b.Write(chunk)
		}
	}
	if format == "json" {
		b.WriteString("}")
	}
	return b.Bytes()
}
