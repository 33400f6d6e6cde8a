package mutate_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt"
	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
	"github.com/sops-webhook/sops-webhook/pkg/mutate"
	"github.com/sops-webhook/sops-webhook/test/testbed/sopskit"
)

// outcome is what a bad input must lead to.
type outcome int

const (
	// denied: 403 with a message naming the object; never a timeout.
	denied outcome = iota
	// badRequest: 400, the object does not decode.
	badRequest
	// untouched: allowed without a patch.
	untouched
	// patched: allowed with a patch (the input was odd but valid).
	patched
)

// secretMarker is in every plaintext of the table; it must never show up in
// a message or a log line.
const secretMarker = "BADINPUT-s3cr3t"

// TestBadInputs runs named hostile or malformed inputs through the handler
// with the real decryptor and a real key. Each must end as its row says,
// without a panic, without reaching the decrypt deadline, and without the
// plaintext in the response or the debug logs.
func TestBadInputs(t *testing.T) {
	key := sopskit.NewAgeKey(t, false)
	other := sopskit.NewAgeKey(t, false)
	r := sopskit.Recipients{Age: []sopskit.AgeKey{key}}
	src, err := keysource.LoadAge("k", key.IdentityFile)
	require.NoError(t, err)
	ring, err := keysource.NewRing(src)
	require.NoError(t, err)
	h := mutate.NewHandler(static(mutate.Engine{Decryptor: decrypt.New(ring)}))

	plainEnv := "PASSWORD=" + secretMarker + "\n"
	plainYAML := "password: " + secretMarker + "\nnote_unencrypted: public\n"
	env := sopskit.SopsEncrypt(t, []byte(plainEnv), "dotenv", r)
	yml := sopskit.SopsEncrypt(t, []byte(plainYAML), "yaml", r, "--unencrypted-suffix", "_unencrypted")
	values := sopskit.SopsEncrypt(t, []byte("db:\n  password: "+secretMarker+"\n  user: "+secretMarker+"-u\n"), "yaml", r)
	index := sopskit.ValuesIndex(t, values)
	leaves := sopskit.ValuesLeaves(t, values)
	token, userToken := leaves[0].Value.(string), leaves[1].Value.(string)
	otherIndex := sopskit.ValuesIndex(t, sopskit.SopsEncrypt(t, []byte("db:\n  password: x\n  user: y\n"), "yaml", r))

	secretReq := func(data map[string][]byte, annotations map[string]string) admissionv1.AdmissionRequest {
		s := secret("bad", data)
		s.Annotations = annotations
		return request(t, "Secret", admissionv1.Create, s)
	}
	one := func(v []byte) admissionv1.AdmissionRequest { return secretReq(map[string][]byte{"app.env": v}, nil) }
	oneYAML := func(v []byte) admissionv1.AdmissionRequest { return secretReq(map[string][]byte{"app.yaml": v}, nil) }
	withIndex := func(v, idx string) admissionv1.AdmissionRequest {
		return secretReq(map[string][]byte{"password": []byte(v)}, map[string]string{mutate.AnnotationValues: idx})
	}
	configMap := func(data map[string]string) admissionv1.AdmissionRequest {
		return request(t, "ConfigMap", admissionv1.Create, &corev1.ConfigMap{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}, ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: "team-a"}, Data: data,
		})
	}
	raw := func(kind, body string) admissionv1.AdmissionRequest {
		req := request(t, kind, admissionv1.Create, secret("bad", nil))
		req.Object = runtime.RawExtension{Raw: []byte(body)}
		return req
	}
	replaceMeta := func(doc []byte, re, repl string) []byte {
		out := regexp.MustCompile(re).ReplaceAll(doc, []byte(repl))
		require.NotEqual(t, string(doc), string(out), "the edit %q changed nothing", re)
		return out
	}
	manyTokens := func(n int) string { return strings.Repeat(token+" ", n) }
	manyDocs := map[string][]byte{}
	for i := range mutate.MaxDocumentsPerObject + 1 {
		manyDocs[fmt.Sprintf("d%03d.env", i)] = env
	}
	manyKeys := strings.Repeat("        - recipient: "+other.Recipient+"\n          enc: x\n", decrypt.MaxMasterKeys+1)

	tests := []struct {
		name string
		req  admissionv1.AdmissionRequest
		want outcome
		// reason, when set, must be in the message.
		reason string
	}{
		{"tampered MAC", oneYAML(bytes.Replace(yml, []byte("note_unencrypted: public"), []byte("note_unencrypted: forged"), 1)), denied, "MAC mismatch"},
		{"MAC removed", oneYAML(replaceMeta(yml, `    mac: .*\n`, "")), denied, "no usable MAC"},
		{"values swapped between keys", oneYAML(replaceMeta(yml, `password: (ENC\[[^\]]*\])`, "password: "+userToken)), denied, "failed authentication"},
		{"truncated ENC[ token", one([]byte("x=ENC[AES256_GCM,data:")), denied, "truncated or malformed"},
		{"token without the closing bracket", withIndex(strings.TrimSuffix(token, "]"), index), denied, "truncated or malformed"},
		{"type:bytes document", one(bytes.ReplaceAll(env, []byte("type:str]"), []byte("type:bytes]"))), denied, ""},
		{"type:bytes token", withIndex(strings.Replace(token, "type:str]", "type:bytes]", 1), index), denied, "bytes"},
		{"wrong key", one(sopskit.SopsEncrypt(t, []byte(plainEnv), "dotenv", sopskit.Recipients{Age: []sopskit.AgeKey{other}})), denied, "no configured key can open it"},
		{"duplicate keys in a YAML document", oneYAML(append([]byte("password: a\npassword: b\n"), yml[bytes.Index(yml, []byte("sops:")):]...)), denied, ""},
		{"YAML alias bomb", oneYAML([]byte("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nsops:\n    mac: ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]\n")), denied, ""},
		{"YAML alias bomb in a second document", oneYAML(append(bytes.Clone(yml), "---\na: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"...)), denied, "YAML alias"},
		{"6,000 equal keys in a YAML document", oneYAML(append(bytes.Clone(yml), "zz:\n"+strings.Repeat("  a: b\n", 6000)...)), denied, "does not parse"},
		{"YAML flow list over the items cap", oneYAML(append(bytes.Clone(yml), "zz: ["+strings.Repeat("a,", decrypt.MaxDocumentItems)+"a]\n"...)), denied, "limited to 65536"},
		{"a data map of more than MaxObjectKeys entries", secretReq(manyData(mutate.MaxObjectKeys+1, env), nil), badRequest, "more than 8192 entries"},
		{"valid YAML nested 33 levels deep", oneYAML(sopskit.SopsEncrypt(t, []byte("k: "+strings.Repeat("[", decrypt.MaxDocumentDepth)+"x"+strings.Repeat("]", decrypt.MaxDocumentDepth)+"\n"), "yaml", r)), denied, "nest more than 32 levels deep"},
		{"deeply nested YAML", oneYAML(append([]byte(strings.Repeat("[", 10000)+strings.Repeat("]", 10000)+"\n"), yml[bytes.Index(yml, []byte("sops:")):]...)), denied, ""},
		{"invalid base64 in Secret data", raw("Secret", `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"bad","namespace":"team-a"},"data":{"x":"RU5DW0FFUzI1Nl9HQ00sZGF0!!!"}}`), badRequest, ""},
		{"not JSON at all", raw("Secret", `RU5DW0FFUzI1Nl9HQ00sZGF0 {{{`), badRequest, ""},
		{"1 MiB Secret without SOPS content", secretReq(map[string][]byte{"big": bytes.Repeat([]byte("a"), 1<<20)}, nil), untouched, ""},
		{"1 MiB ConfigMap without SOPS content", configMap(map[string]string{"big": strings.Repeat("b", 1<<20)}), untouched, ""},
		{"document over 1 MiB", one(append(bytes.Repeat([]byte("#"), decrypt.MaxDocumentSize), env...)), denied, "too large"},
		{"10,000 tokens decrypt", withIndex(manyTokens(decrypt.MaxTokens), index), patched, ""},
		{"10,001 tokens", withIndex(manyTokens(decrypt.MaxTokens+1), index), denied, "more than 10000"},
		{"more documents than allowed", secretReq(manyDocs, nil), denied, "more than 256 SOPS documents"},
		{"more master keys than allowed", oneYAML(replaceMeta(yml, `(?s)    age:\n.*?(    lastmodified:)`, "    age:\n"+manyKeys+"${1}")), denied, "master keys listed"},
		{"unknown key type in the metadata", oneYAML(replaceMeta(yml, `(?s)    age:\n.*?(    lastmodified:)`, "    foo_kms:\n        - url: http://169.254.169.254/\n${1}")), denied, ""},
		{"metadata names a Vault address", oneYAML(replaceMeta(yml, `(?s)    age:\n.*?(    lastmodified:)`, "    hc_vault:\n        - vault_address: http://169.254.169.254\n          engine_path: transit\n          key_name: k\n          created_at: \"2026-01-01T00:00:00Z\"\n          enc: vault:v1:x\n${1}")), denied, "no configured key can open it"},
		{"metadata names an AWS role and profile", oneYAML(replaceMeta(yml, `(?s)    age:\n.*?(    lastmodified:)`, "    kms:\n        - arn: arn:aws:kms:eu-west-1:1:key/k\n          role: arn:aws:iam::1:role/evil\n          aws_profile: evil\n          created_at: \"2026-01-01T00:00:00Z\"\n          enc: eA==\n${1}")), denied, "no configured key can open it"},
		{"metadata names an Azure vault URL", oneYAML(replaceMeta(yml, `(?s)    age:\n.*?(    lastmodified:)`, "    azure_kv:\n        - vault_url: http://169.254.169.254\n          name: k\n          version: \"1\"\n          created_at: \"2026-01-01T00:00:00Z\"\n          enc: eA\n${1}")), denied, "no configured key can open it"},
		{"values index over 256 KiB", withIndex(token, `{"paths":{"a":"`+strings.Repeat("a", decrypt.MaxIndexSize)+`"},"sops":{}}`), denied, "too large"},
		{"values index is not JSON", withIndex(token, "{"), denied, "values index is unusable"},
		{"token missing from the index", withIndex(token, otherIndex), denied, "missing from the values index"},
		{"token path edited", withIndex(token, strings.Replace(index, `"db:password:"`, `"db:user:"`, 1)), denied, "does not authenticate"},
		{"tokens without an index", secretReq(map[string][]byte{"password": []byte(token)}, nil), denied, string(decrypt.ReasonNoIndex)},
		{"tokens with an empty index", withIndex(token, ""), denied, string(decrypt.ReasonBadIndex)},
		{"non-UTF-8 plaintext into ConfigMap data", configMap(map[string]string{"blob": string(sopskit.SopsEncrypt(t, []byte(secretMarker+"\xff\xfe"), "binary", r))}), denied, "not UTF-8"},
		{"expand collides with an existing key", secretReq(map[string][]byte{"app.env": env, "PASSWORD": []byte("x")}, map[string]string{mutate.AnnotationExpand: "true"}), denied, "collides"},
		{"expand of a nested document", secretReq(map[string][]byte{"app.yaml": sopskit.SopsEncrypt(t, []byte("db:\n  password: "+secretMarker+"\n"), "yaml", r)}, map[string]string{mutate.AnnotationExpand: "true"}), denied, "flat map"},
		{"expand with a bad value", secretReq(map[string][]byte{"app.env": env}, map[string]string{mutate.AnnotationExpand: "sure"}), denied, `"true" or "false"`},
		{"marker in an unrelated annotation only", secretReq(map[string][]byte{"k": []byte("v")}, map[string]string{"note": "ENC[AES256_GCM,data:"}), untouched, ""},
		{"Helm release record with ciphertext", func() admissionv1.AdmissionRequest {
			s := secret("sh.helm.release.v1.x.v1", map[string][]byte{"release": env})
			s.Type = mutate.HelmReleaseSecretType
			return request(t, "Secret", admissionv1.Create, s)
		}(), untouched, ""},
		{"valid document, for contrast", one(env), patched, ""},
	}
	require.GreaterOrEqual(t, len(tests), 30)

	var logs bytes.Buffer
	log := zap.New(zap.WriteTo(&logs), zap.UseDevMode(false), zap.Level(zapcore.DebugLevel))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctrllog.IntoContext(context.Background(), log)
			areq := admission.Request{AdmissionRequest: tt.req}
			resp := h.Handle(ctx, areq)
			msg := messageOf(resp)
			assert.NotContains(t, msg, secretMarker, "plaintext in the message")
			assert.NotContains(t, msg, string(decrypt.ReasonTimeout), "reached the deadline")
			switch tt.want {
			case denied:
				require.False(t, resp.Allowed, "allowed: %s", msg)
				assert.EqualValues(t, 403, resp.Result.Code, msg)
				assert.Contains(t, msg, "sops-webhook: cannot decrypt")
			case badRequest:
				require.False(t, resp.Allowed)
				assert.EqualValues(t, 400, resp.Result.Code)
			case untouched:
				require.True(t, resp.Allowed, msg)
				assert.Empty(t, resp.Patches)
			case patched:
				require.True(t, resp.Allowed, msg)
				assert.NotEmpty(t, resp.Patches)
				for _, p := range resp.Patches {
					if v, ok := p.Value.(string); ok {
						assert.NotContains(t, v, "ENC[AES256_GCM", "nothing left encrypted")
					}
				}
			}
			if tt.reason != "" {
				assert.Contains(t, msg, tt.reason)
			}
		})
	}
	assert.NotEmpty(t, logs.String(), "debug logs were captured")
	assert.NotContains(t, logs.String(), secretMarker, "plaintext in the logs")
	assert.NotContains(t, logs.String(), base64.StdEncoding.EncodeToString([]byte(secretMarker))[:12], "base64 plaintext in the logs")
}

// manyData is n data keys with short values, and one document.
func manyData(n int, doc []byte) map[string][]byte {
	data := map[string][]byte{"app.env": doc}
	for i := range n {
		data[fmt.Sprintf("k%d", i)] = []byte("v")
	}
	return data
}
