package decrypt

import (
	"encoding/base64"
	"io"
	"testing"

	"github.com/getsops/sops/v3/logging"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDetect(t *testing.T) {
	const tok = "ENC[AES256_GCM,data:AAAA,iv:BBBB,tag:CCCC,type:str]"
	tests := []struct {
		name, file, value string
		want              Format
	}{
		{"empty", "x", "", FormatNone},
		{"plain text", "x", "password: hunter2\n", FormatNone},
		{"sops word without token", "x", "sops:\n  mac: nope\n", FormatNone},
		{"yaml", "a.yaml", "a: " + tok + "\nsops:\n    mac: " + tok + "\n", FormatYAML},
		{"yaml with bom and blank lines", "a", "\ufeff\n\na: " + tok + "\nsops:\n  mac: x\n", FormatYAML},
		{"json pretty", "a.json", "{\n\t\"a\": \"" + tok + "\",\n\t\"sops\": {\"mac\": \"" + tok + "\"}\n}\n", FormatJSON},
		{"json compact", "a", `{"a":"` + tok + `","sops":{"mac":"` + tok + `"}}`, FormatJSON},
		{"binary envelope", "tls.key", `{"data":"` + tok + `","sops":{"mac":"` + tok + `","k":{"data":1}}}`, FormatBinary},
		{"binary envelope named json is json", "cfg.JSON", `{"data":"` + tok + `","sops":{}}`, FormatJSON},
		{"json with data and more keys", "x", `{"data":"` + tok + `","other":"x","sops":{}}`, FormatJSON},
		{"dotenv", "app.env", "A=" + tok + "\nsops_version=3.13.3\nsops_mac=" + tok + "\n", FormatDotenv},
		{"ini", "a.ini", "[app]\nkey = " + tok + "\n\n[sops]\nmac = " + tok + "\n", FormatINI},
		{"values token alone", "password", tok, FormatTokens},
		{"values token in config file", "app.conf", "url=postgres://u:" + tok + "@db\n", FormatTokens},
		{"indented sops key is not yaml metadata", "x", "a:\n  sops: " + tok + "\n", FormatTokens},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, Detect([]byte(tt.value), tt.file))
		})
	}
}

func TestMayHoldBase64Marker(t *testing.T) {
	// The marker at each alignment inside a base64-encoded value is found
	// without decoding; text without it is not.
	for pad := range 3 {
		value := make([]byte, pad)
		value = append(value, "x: ENC[AES256_GCM,data:abc,iv:x,tag:y,type:str]"...)
		enc := base64.StdEncoding.EncodeToString(value)
		assert.True(t, MayHoldBase64Marker([]byte(`{"data":{"k":"`+enc+`"}}`)), "alignment %d", pad)
	}
	plain := base64.StdEncoding.EncodeToString([]byte("ENC[AES256_GCM is mentioned but not as a token"))
	assert.False(t, MayHoldBase64Marker([]byte(plain)))
}

func TestDiscardLibraryLogs(t *testing.T) {
	require.NotEmpty(t, logging.Loggers, "sops registered its loggers")
	DiscardLibraryLogs()
	for name, l := range logging.Loggers {
		assert.Equal(t, io.Discard, l.Out, "sops logger %s still writes", name)
	}
}
