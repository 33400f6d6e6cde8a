package standin

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"k8s.io/client-go/kubernetes"
)

// AWS is a stand-in for AWS STS and KMS (AWS cannot run here). It
// speaks, over TLS on loopback, what the real AWS SDK sends:
//
//   - STS AssumeRoleWithWebIdentity (query protocol, XML answer): the web
//     identity token is a JWT verified for real against a JWKS, in the e2e
//     tests the API server's own OIDC keys, with its issuer, the audience
//     sts.amazonaws.com, and the subject each role trusts.
//   - KMS Encrypt and Decrypt (JSON 1.1 protocol): AES-256-GCM per key ARN,
//     with the encryption context as additional data. The caller must use
//     the admin credentials or credentials this STS issued (access key and
//     session token; the SigV4 signature itself is not recomputed).
type AWS struct {
	// URL is https://127.0.0.1:PORT for both services; CAFile its CA.
	URL, CAFile string
	// AdminAccessKey and AdminSecretKey are static credentials (for the
	// sops CLI, which encrypts test payloads).
	AdminAccessKey, AdminSecretKey string
	// AssumeCalls and Decrypts count successful calls.
	AssumeCalls, Decrypts atomic.Int64

	jwks     func(ctx context.Context) (*jose.JSONWebKeySet, error)
	issuer   string
	trusts   map[string]string // role ARN -> trusted JWT subject
	pods     map[string]string // subject -> role, EKS Pod Identity
	srv      *http.Server
	hang     atomic.Bool
	mu       sync.Mutex
	sessions map[string]awsSession // access key -> session
	keys     aeadKeys
	// callers records, per successful Decrypt, the role (or "admin") that
	// called it.
	callers []string
}

type awsSession struct {
	secret, token, role string
	expires             time.Time
}

// AWSOptions configure StartAWS.
type AWSOptions struct {
	// JWKS returns the keys web identity tokens are signed with; Issuer is
	// their expected iss claim.
	JWKS   func(ctx context.Context) (*jose.JSONWebKeySet, error)
	Issuer string
	// Trusts maps role ARNs to the JWT subject each trusts, e.g.
	// system:serviceaccount:sops-webhook:sops-webhook.
	Trusts map[string]string
	// PodIdentity maps service-account subjects to the role an EKS Pod
	// Identity association gives them.
	PodIdentity map[string]string
}

// StartAWS starts the stand-in with its own CA written to dir.
func StartAWS(dir string, o AWSOptions) (*AWS, error) {
	ep, err := newTLSEndpoint(dir, "aws")
	if err != nil {
		return nil, err
	}
	a := &AWS{
		URL: ep.url, CAFile: ep.caFile,
		AdminAccessKey: "AKIA" + strings.ToUpper(randomHex(8)), AdminSecretKey: randomHex(20),
		jwks: o.JWKS, issuer: o.Issuer, trusts: o.Trusts, pods: o.PodIdentity,
		sessions: map[string]awsSession{},
	}
	a.srv = ep.serve(a)
	return a, nil
}

// Close stops the stand-in.
func (a *AWS) Close() error { return a.srv.Close() }

// SetHanging makes every request hang until the client gives up, or answer
// again.
func (a *AWS) SetHanging(on bool) { a.hang.Store(on) }

// Callers returns who called each successful Decrypt, in order.
func (a *AWS) Callers() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.callers)
}

// AdminEnv is the environment the sops CLI needs to encrypt with the KMS
// stand-in.
func (a *AWS) AdminEnv() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + a.AdminAccessKey, "AWS_SECRET_ACCESS_KEY=" + a.AdminSecretKey,
		"AWS_REGION=eu-west-1", "AWS_ENDPOINT_URL_KMS=" + a.URL, "AWS_ENDPOINT_URL_STS=" + a.URL, "AWS_CA_BUNDLE=" + a.CAFile,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// UseAdminEnv sets AdminEnv in the test process's own environment, for the
// test's duration: the real AWS SDK's default chain then finds the admin
// credentials, the endpoint and the CA. Not for parallel tests.
func (a *AWS) UseAdminEnv(t testing.TB) {
	for _, kv := range a.AdminEnv() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

// ServeHTTP routes by protocol: KMS requests carry X-Amz-Target, STS ones a
// form with Action.
func (a *AWS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a.hang.Load() {
		hang(r.Context())
		return
	}
	if r.Method == http.MethodGet && r.URL.Path == "/v1/credentials" {
		a.podIdentity(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil || r.Method != http.MethodPost {
		awsJSONError(w, "ValidationException", "bad request")
		return
	}
	if target := r.Header.Get("X-Amz-Target"); target != "" {
		a.kms(w, r, target, body)
		return
	}
	r.Body = io.NopCloser(strings.NewReader(string(body)))
	if err := r.ParseForm(); err != nil || r.PostForm.Get("Action") != "AssumeRoleWithWebIdentity" {
		http.Error(w, "unsupported action", http.StatusBadRequest)
		return
	}
	a.assumeRole(w, r)
}

// PodIdentityURL is the EKS Pod Identity agent stand-in's credentials URL
// (AWS_CONTAINER_CREDENTIALS_FULL_URI).
func (a *AWS) PodIdentityURL() string { return a.URL + "/v1/credentials" }

// podIdentity answers like the EKS Pod Identity agent: the Authorization
// header is the pod's service-account token (audience
// pods.eks.amazonaws.com), exchanged for the associated role's credentials.
func (a *AWS) podIdentity(w http.ResponseWriter, r *http.Request) {
	sub, err := a.verifyAudience(r.Context(), r.Header.Get("Authorization"), "pods.eks.amazonaws.com")
	role, ok := a.pods[sub]
	if err != nil || !ok {
		http.Error(w, `{"message":"unauthorized"}`, http.StatusUnauthorized)
		return
	}
	s := awsSession{secret: randomHex(20), token: randomHex(32), role: role, expires: time.Now().Add(time.Hour)}
	akid := "ASIA" + strings.ToUpper(randomHex(8))
	a.mu.Lock()
	a.sessions[akid] = s
	a.mu.Unlock()
	a.AssumeCalls.Add(1)
	writeJSON(w, map[string]any{"AccessKeyId": akid, "SecretAccessKey": s.secret, "Token": s.token,
		"Expiration": s.expires.UTC().Format(time.RFC3339), "AccountId": "111122223333"})
}

type stsCredentials struct {
	AccessKeyID     string `xml:"AccessKeyId"`
	SecretAccessKey string `xml:"SecretAccessKey"`
	SessionToken    string `xml:"SessionToken"`
	Expiration      string `xml:"Expiration"`
}

type stsResponse struct {
	XMLName xml.Name `xml:"https://sts.amazonaws.com/doc/2011-06-15/ AssumeRoleWithWebIdentityResponse"`
	Result  struct {
		Subject     string         `xml:"SubjectFromWebIdentityToken"`
		Credentials stsCredentials `xml:"Credentials"`
		RoleUser    struct {
			Arn string `xml:"Arn"`
			ID  string `xml:"AssumedRoleId"`
		} `xml:"AssumedRoleUser"`
	} `xml:"AssumeRoleWithWebIdentityResult"`
	RequestID string `xml:"ResponseMetadata>RequestId"`
}

func (a *AWS) assumeRole(w http.ResponseWriter, r *http.Request) {
	role := r.PostForm.Get("RoleArn")
	trusted, ok := a.trusts[role]
	sub, err := a.verify(r.Context(), r.PostForm.Get("WebIdentityToken"))
	if !ok || err != nil || sub != trusted {
		stsError(w, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
		return
	}
	s := awsSession{secret: randomHex(20), token: randomHex(32), role: role, expires: time.Now().Add(time.Hour)}
	akid := "ASIA" + strings.ToUpper(randomHex(8))
	a.mu.Lock()
	a.sessions[akid] = s
	a.mu.Unlock()
	a.AssumeCalls.Add(1)
	var resp stsResponse
	resp.Result.Subject = sub
	resp.Result.Credentials = stsCredentials{AccessKeyID: akid, SecretAccessKey: s.secret, SessionToken: s.token, Expiration: s.expires.UTC().Format(time.RFC3339)}
	resp.Result.RoleUser.Arn = role
	resp.Result.RoleUser.ID = "AROA" + strings.ToUpper(randomHex(8))
	resp.RequestID = randomHex(8)
	w.Header().Set("Content-Type", "text/xml")
	_ = xml.NewEncoder(w).Encode(resp)
}

// verify checks a web identity token's signature against the JWKS, its
// issuer, audience and expiry, and returns its subject.
func (a *AWS) verify(ctx context.Context, raw string) (string, error) {
	return a.verifyAudience(ctx, raw, "sts.amazonaws.com")
}

func (a *AWS) verifyAudience(ctx context.Context, raw, audience string) (string, error) {
	return verifyJWT(ctx, a.jwks, raw, a.issuer, audience)
}

func stsError(w http.ResponseWriter, code, msg string) {
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(http.StatusForbidden)
	_ = xml.NewEncoder(w).Encode(struct {
		XMLName xml.Name `xml:"https://sts.amazonaws.com/doc/2011-06-15/ ErrorResponse"`
		Type    string   `xml:"Error>Type"`
		Code    string   `xml:"Error>Code"`
		Message string   `xml:"Error>Message"`
	}{Type: "Sender", Code: code, Message: msg})
}

var credentialRE = regexp.MustCompile(`Credential=([A-Z0-9]+)/`)

// caller returns who signed the request: "admin", a role ARN, or "".
func (a *AWS) caller(r *http.Request) string {
	m := credentialRE.FindStringSubmatch(r.Header.Get("Authorization"))
	if m == nil {
		return ""
	}
	if m[1] == a.AdminAccessKey {
		return "admin"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[m[1]]
	if !ok || time.Now().After(s.expires) || r.Header.Get("X-Amz-Security-Token") != s.token {
		return ""
	}
	return s.role
}

type kmsRequest struct {
	KeyID             string            `json:"KeyId"`
	Plaintext         []byte            `json:"Plaintext"`
	CiphertextBlob    []byte            `json:"CiphertextBlob"`
	EncryptionContext map[string]string `json:"EncryptionContext"`
}

func (a *AWS) kms(w http.ResponseWriter, r *http.Request, target string, body []byte) {
	who := a.caller(r)
	if who == "" {
		awsJSONError(w, "UnrecognizedClientException", "The security token included in the request is invalid.")
		return
	}
	var req kmsRequest
	if err := json.Unmarshal(body, &req); err != nil {
		awsJSONError(w, "ValidationException", "bad JSON")
		return
	}
	switch target {
	case "TrentService.Encrypt":
		blob := a.seal(req.KeyID, req.Plaintext, req.EncryptionContext)
		awsJSON(w, map[string]any{"CiphertextBlob": blob, "KeyId": req.KeyID, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
	case "TrentService.Decrypt":
		arn, plain, err := a.open(req.CiphertextBlob, req.EncryptionContext)
		if err != nil || (req.KeyID != "" && req.KeyID != arn) {
			awsJSONError(w, "InvalidCiphertextException", "")
			return
		}
		a.mu.Lock()
		a.callers = append(a.callers, who)
		a.mu.Unlock()
		a.Decrypts.Add(1)
		awsJSON(w, map[string]any{"Plaintext": plain, "KeyId": arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
	default:
		awsJSONError(w, "UnknownOperationException", "")
	}
}

func (a *AWS) gcm(arn string) cipher.AEAD { return a.keys.get(arn) }

// contextAAD binds a ciphertext to its key and encryption context.
func contextAAD(arn string, ec map[string]string) []byte {
	keys := make([]string, 0, len(ec))
	for k := range ec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := []byte(arn)
	for _, k := range keys {
		out = append(append(append(append(out, 0), k...), 0), ec[k]...)
	}
	return out
}

// seal returns len(arn) | arn | nonce | ciphertext, like KMS blobs that name
// their key.
func (a *AWS) seal(arn string, plain []byte, ec map[string]string) []byte {
	g := a.gcm(arn)
	out := binary.BigEndian.AppendUint16(nil, uint16(len(arn)))
	out = append(out, arn...)
	nonce := make([]byte, g.NonceSize())
	_, _ = rand.Read(nonce)
	out = append(out, nonce...)
	return g.Seal(out, nonce, plain, contextAAD(arn, ec))
}

func (a *AWS) open(blob []byte, ec map[string]string) (string, []byte, error) {
	if len(blob) < 2 {
		return "", nil, errors.New("short blob")
	}
	n := int(binary.BigEndian.Uint16(blob))
	if len(blob) < 2+n {
		return "", nil, errors.New("short blob")
	}
	arn := string(blob[2 : 2+n])
	g := a.gcm(arn)
	rest := blob[2+n:]
	if len(rest) < g.NonceSize() {
		return "", nil, errors.New("short blob")
	}
	plain, err := g.Open(nil, rest[:g.NonceSize()], rest[g.NonceSize():], contextAAD(arn, ec))
	return arn, plain, err
}

func awsJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	_ = json.NewEncoder(w).Encode(v)
}

func awsJSONError(w http.ResponseWriter, code, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": code, "message": msg})
}

// APIServerOIDC returns the API server's service-account issuer and a JWKS
// source reading its /openid/v1/jwks, as a cloud identity provider does
// when it federates a cluster's service accounts.
func APIServerOIDC(ctx context.Context, kube kubernetes.Interface) (string, func(context.Context) (*jose.JSONWebKeySet, error), error) {
	raw, err := kube.Discovery().RESTClient().Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
	if err != nil {
		return "", nil, err
	}
	var disc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(raw, &disc); err != nil {
		return "", nil, err
	}
	return disc.Issuer, func(ctx context.Context) (*jose.JSONWebKeySet, error) {
		raw, err := kube.Discovery().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
		if err != nil {
			return nil, err
		}
		var set jose.JSONWebKeySet
		return &set, json.Unmarshal(raw, &set)
	}, nil
}
