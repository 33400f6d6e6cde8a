package callerauth

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/sops-webhook/sops-webhook/certs"
)

// The modes in which the webhook serves callers, the values of
// --caller-auth and of the mode label of UnauthenticatedMetric.
const (
	// ModeClientCertificate: only callers with a certificate the client
	// CA signed get an answer.
	ModeClientCertificate = "client-certificate"
	// ModeNetworkPolicy: any caller that reaches the port is answered; a
	// NetworkPolicy is meant to let only the API server reach it.
	ModeNetworkPolicy = "network-policy"
	// ModeNone: any caller that reaches the port is answered, and the
	// operator said so knowingly.
	ModeNone = "none"
)

// Modes lists the modes, ModeClientCertificate first.
var Modes = []string{ModeClientCertificate, ModeNetworkPolicy, ModeNone}

// The reasons a caller is refused, the labels of RefusalsMetric.
const (
	ReasonNoCertificate  = "no_certificate"
	ReasonUntrusted      = "untrusted"
	ReasonNameNotAllowed = "name_not_allowed"
)

// Reasons lists every refusal reason.
var Reasons = []string{ReasonNoCertificate, ReasonUntrusted, ReasonNameNotAllowed}

// MaxCAFileSize caps the client CA file: a bundle of a few CAs is a few KiB,
// and the file is read again on every Reload.
const MaxCAFileSize = 1 << 20

// Verifier admits TLS clients whose certificate chains to a CA of its file,
// for client authentication, and, when names are set, names one of them as
// its subject's common name or as a DNS name. It is safe for concurrent use.
type Verifier struct {
	file    string
	names   []string
	refused func(reason string)
	now     func() time.Time

	mu   sync.RWMutex
	pool *x509.CertPool
	sum  [sha256.Size]byte
}

// New returns a Verifier for the PEM CA certificates in file, admitting
// only the given names (any name when empty). refused, if not nil, is told
// the reason of each refusal. The error names the file and why it holds no
// usable CA.
func New(file string, names []string, refused func(reason string)) (*Verifier, error) {
	if refused == nil {
		refused = func(string) {}
	}
	v := &Verifier{file: file, names: slices.Clone(names), refused: refused, now: time.Now}
	if _, err := v.Reload(); err != nil {
		return nil, err
	}
	return v, nil
}

// SetClock replaces the clock certificates are checked against (time.Now);
// tests that move time set it. Call it before the Verifier is in use.
func (v *Verifier) SetClock(now func() time.Time) { v.now = now }

// Reload reads the CA file again and reports whether its content changed.
// A file that cannot be read or holds no certificate is an error, and the
// CAs read before stay in use.
func (v *Verifier) Reload() (changed bool, err error) {
	raw, err := readCapped(v.file)
	if err != nil {
		return false, fmt.Errorf("client CA file %s: %w", v.file, err)
	}
	sum := sha256.Sum256(raw)
	v.mu.RLock()
	same := v.pool != nil && sum == v.sum
	v.mu.RUnlock()
	if same {
		return false, nil
	}
	pool, err := parsePool(raw)
	if err != nil {
		return false, fmt.Errorf("client CA file %s: %w", v.file, err)
	}
	v.mu.Lock()
	v.pool, v.sum = pool, sum
	v.mu.Unlock()
	return true, nil
}

// readCapped reads file, refusing one over MaxCAFileSize.
func readCapped(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, MaxCAFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > MaxCAFileSize {
		return nil, fmt.Errorf("larger than %d bytes", MaxCAFileSize)
	}
	return raw, nil
}

// parsePool makes a pool of the certificates in raw (certs.ParseCertificates);
// it fails when there is none, or when one is not a CA.
func parsePool(raw []byte) (*x509.CertPool, error) {
	cas := certs.ParseCertificates(raw)
	if len(cas) == 0 {
		return nil, errors.New("no CA certificate")
	}
	pool := x509.NewCertPool()
	for i, c := range cas {
		if !c.IsCA {
			return nil, fmt.Errorf("certificate %d (%q) is not a CA", i+1, c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	return pool, nil
}

// Configure makes c ask every client for a certificate and abort the
// handshake of one that Verify refuses, before any request is read.
func (v *Verifier) Configure(c *tls.Config) {
	// RequestClientCert rather than RequireAnyClientCert, so that a client
	// without a certificate reaches Verify and is counted.
	c.ClientAuth = tls.RequestClientCert
	c.VerifyConnection = v.Verify
}

// Verify checks the client certificate of a handshake. The error names the
// certificate's subject and the reason.
func (v *Verifier) Verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		v.refused(ReasonNoCertificate)
		return errors.New("caller refused: no client certificate")
	}
	leaf := cs.PeerCertificates[0]
	intermediates := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		intermediates.AddCert(c)
	}
	v.mu.RLock()
	pool := v.pool
	v.mu.RUnlock()
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: intermediates,
		CurrentTime:   v.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		v.refused(ReasonUntrusted)
		return fmt.Errorf("caller refused: client certificate %q: %w", leaf.Subject.CommonName, err)
	}
	if len(v.names) > 0 && !slices.ContainsFunc(v.names, func(n string) bool {
		return n == leaf.Subject.CommonName || slices.Contains(leaf.DNSNames, n)
	}) {
		v.refused(ReasonNameNotAllowed)
		return fmt.Errorf("caller refused: client certificate %q is not for an allowed name", leaf.Subject.CommonName)
	}
	return nil
}
