package selfcerts

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/sops-webhook/sops-webhook/certs"
)

// Keys of the Secret that holds the certificates.
const (
	// keyTrusted holds the CAs the API server is told to trust, PEM, the
	// signing CA first.
	keyTrusted = "ca.crt"
	keyCAKey   = "ca.key"
	keyCert    = "tls.crt"
	keyKey     = "tls.key"
	// KeyClientCert and KeyClientKey hold the API server's client
	// certificate and key, when Options.ClientName is set: what the
	// operator copies to the control-plane nodes.
	KeyClientCert = "apiserver-client.crt"
	KeyClientKey  = "apiserver-client.key"
)

// FileClientCA is the file of the cert dir that holds the trusted CAs, the
// webhook's --client-ca-file when it issues the client certificate.
const FileClientCA = "client-ca.crt"

// AnnotationRotate on the Secret asks for a new CA and serving certificate
// now; set it to any new value (a timestamp). The webhook copies the value
// to AnnotationRotated once the new certificate is in the Secret.
const (
	AnnotationRotate  = "sops-webhook.io/rotate"
	AnnotationRotated = "sops-webhook.io/rotated"
)

// AnnotationRevoke on the Secret asks to stop trusting every CA but the
// signing one, after a rotation (for example once the Secret was exposed);
// set it to any new value. It waits until the serving certificate, and the
// API server's client certificate when the webhook issues it, are from the
// signing CA and every replica has had revokeAfter to load them. The
// webhook then copies the value to AnnotationRevoked and adds the revoked
// CAs' SHA-256 fingerprints to AnnotationRevokedCAs (the last
// maxRevokedCAs): no replica carries them forward in the caBundle again.
const (
	AnnotationRevoke     = "sops-webhook.io/revoke-previous-cas"
	AnnotationRevoked    = "sops-webhook.io/revoked-previous-cas"
	AnnotationRevokedCAs = "sops-webhook.io/revoked-cas"
)

// maxRevokedCAs caps the fingerprints AnnotationRevokedCAs keeps: more
// than the CAs the caBundle ever holds (maxTrusted) across a few
// revocations; an older one has long expired.
const maxRevokedCAs = 16

// Defaults. A certificate is renewed when a third of its validity is left.
const (
	DefaultCAValidity   = 5 * 365 * 24 * time.Hour
	DefaultCertValidity = 90 * 24 * time.Hour
	DefaultInterval     = time.Minute
)

// maxTrusted caps the CAs kept in the caBundle: the signing CA and the ones
// before it, whose certificates replicas may still serve.
const maxTrusted = 4

const caName = "sops-webhook self-managed CA"

// Options configure a Manager.
type Options struct {
	Client kubernetes.Interface
	// Namespace and SecretName name the Secret shared by all replicas.
	Namespace, SecretName string
	// WebhookConfiguration is the MutatingWebhookConfiguration whose
	// webhooks get the caBundle.
	WebhookConfiguration string
	// Hosts are the serving certificate's DNS names and IP addresses.
	Hosts []string
	// CertDir receives tls.crt, tls.key and ca.crt, and FileClientCA when
	// ClientName is set.
	CertDir string
	// ClientName, when set, is the common name of a client certificate
	// for the API server that the Manager issues and renews in the Secret
	// (KeyClientCert, KeyClientKey), signed by the same CA.
	ClientName               string
	CAValidity, CertValidity time.Duration
	// Interval is how often Run checks the Secret and the caBundle.
	Interval time.Duration
	// KeepForeignCAs carries forward CAs that someone else put in the
	// caBundle; by default the caBundle holds only this webhook's CAs.
	KeepForeignCAs bool
	// PublishTo, when set, names a ConfigMap in Namespace where the Manager
	// publishes the trusted CAs (KeyCABundle) instead of writing the
	// caBundle itself: a CABundleController, under another identity,
	// copies them there. The Manager then only reads the webhook
	// configuration, and issues a certificate from a new CA once every
	// webhook's caBundle trusts it.
	PublishTo string
	Log       logr.Logger
	// Now is the clock; tests set it.
	Now func() time.Time
}

// Manager keeps a self-managed CA and serving certificate in a Secret, the
// CA in the webhook configuration's caBundle, and the certificate files in
// the cert dir. Every replica runs one; they agree through the Secret's
// resourceVersion (a lost update is re-read and redone), and the caBundle
// keeps the webhook's own CAs until they expire or are revoked
// (AnnotationRevoke), so no replica can remove a CA another replica's
// certificate needs.
type Manager struct {
	o Options
}

// New returns a Manager, or an error naming a missing option.
func New(o Options) (*Manager, error) {
	var errs []error
	if o.Client == nil {
		errs = append(errs, errors.New("no Kubernetes client"))
	}
	for name, v := range map[string]string{"namespace": o.Namespace, "secret name": o.SecretName, "webhook configuration": o.WebhookConfiguration, "cert dir": o.CertDir} {
		if v == "" {
			errs = append(errs, fmt.Errorf("no %s", name))
		}
	}
	if len(o.Hosts) == 0 {
		errs = append(errs, errors.New("no hosts for the serving certificate"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("self-managed certificates: %w", err)
	}
	if o.CAValidity == 0 {
		o.CAValidity = DefaultCAValidity
	}
	if o.CertValidity == 0 {
		o.CertValidity = DefaultCertValidity
	}
	if o.Interval == 0 {
		o.Interval = DefaultInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Manager{o: o}, nil
}

// Bootstrap reconciles until it succeeds once, so the certificate files
// exist, retrying every second; it returns ctx's error if ctx ends first.
func (m *Manager) Bootstrap(ctx context.Context) error {
	for {
		err := m.Reconcile(ctx)
		if err == nil {
			return nil
		}
		m.o.Log.Info("certificates not ready yet; retrying", "error", err.Error())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// Run reconciles every Interval until ctx ends. Errors are logged and retried
// on the next tick; Run returns nil when ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	t := time.NewTicker(m.o.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := m.Reconcile(ctx); err != nil {
				m.o.Log.Error(err, "certificate check failed; retrying")
			}
		}
	}
}

// state is the Secret's content, parsed.
type state struct {
	ca      *certs.CA
	trusted []*x509.Certificate
	cert    *x509.Certificate
	certPEM []byte
	keyPEM  []byte
	// client is the API server's client certificate, nil when absent.
	client *x509.Certificate
}

// Reconcile makes one pass: it creates or renews the CA and the serving
// certificate in the Secret, puts the trusted CAs in the caBundle before any
// certificate they sign is issued, and writes the files.
func (m *Manager) Reconcile(ctx context.Context) error {
	secrets := m.o.Client.CoreV1().Secrets(m.o.Namespace)
	sec, err := secrets.Get(ctx, m.o.SecretName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: m.o.SecretName, Namespace: m.o.Namespace}, Type: corev1.SecretTypeOpaque}
		if err := m.newCA(&state{}, sec); err != nil {
			return err
		}
		created, err := secrets.Create(ctx, sec, metav1.CreateOptions{})
		if err != nil {
			// Another replica created it first: the next pass reads it.
			return fmt.Errorf("create Secret %s/%s: %w", m.o.Namespace, m.o.SecretName, err)
		}
		m.o.Log.Info("created the self-managed CA", "secret", m.o.SecretName)
		sec = created
	case err != nil:
		return fmt.Errorf("get Secret %s/%s: %w", m.o.Namespace, m.o.SecretName, err)
	}

	st, err := parseState(sec)
	now := m.o.Now()
	rotate := sec.Annotations[AnnotationRotate] != "" && sec.Annotations[AnnotationRotate] != sec.Annotations[AnnotationRotated]
	if err != nil || rotate || expiring(st.ca.Cert, now, m.o.CAValidity) {
		reason := "renewal"
		switch {
		case err != nil:
			reason = "unreadable Secret: " + err.Error()
		case rotate:
			reason = "rotation requested"
		}
		if err := m.newCA(st, sec); err != nil {
			return err
		}
		if rotate {
			// Acknowledged with the new CA: with a published caBundle,
			// the certificates it signs come in a later pass, and a
			// request still open would rotate again.
			sec.Annotations[AnnotationRotated] = sec.Annotations[AnnotationRotate]
		}
		if sec, err = secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("store new CA: %w", err)
		}
		m.o.Log.Info("new self-managed CA", "reason", reason)
		if st, err = parseState(sec); err != nil {
			return err
		}
	}

	if revoke := sec.Annotations[AnnotationRevoke]; revoke != "" && revoke != sec.Annotations[AnnotationRevoked] && !rotate {
		if why := m.notRevocable(st, now); why != "" {
			m.o.Log.Info("revoking the previous CAs waits", "reason", why)
		} else {
			revoked := strings.Split(sec.Annotations[AnnotationRevokedCAs], ",")
			for _, c := range st.trusted[1:] {
				revoked = append(revoked, fingerprint(c))
			}
			revoked = slices.DeleteFunc(revoked, func(s string) bool { return s == "" })
			sec.Data[keyTrusted] = encodeCerts(st.trusted[:1])
			sec.Annotations[AnnotationRevoked] = revoke
			sec.Annotations[AnnotationRevokedCAs] = strings.Join(revoked[max(0, len(revoked)-maxRevokedCAs):], ",")
			if sec, err = secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("revoke the previous CAs: %w", err)
			}
			m.o.Log.Info("previous CAs revoked: only the signing CA is trusted", "revoked", len(st.trusted)-1)
			if st, err = parseState(sec); err != nil {
				return err
			}
		}
	}

	revoked := strings.Split(sec.Annotations[AnnotationRevokedCAs], ",")
	if m.o.PublishTo == "" {
		err = m.ensureCABundle(ctx, st.trusted, revoked, now)
	} else if err = m.publish(ctx, st.trusted, sec.Annotations[AnnotationRevokedCAs]); err == nil {
		err = m.caBundleTrusts(ctx, st.ca.Cert)
	}
	if err != nil {
		return err
	}

	serving, client := rotate || m.certNeedsRenewal(st, now), m.o.ClientName != "" && (rotate || m.clientNeedsRenewal(st, now))
	if serving || client {
		if serving {
			certPEM, keyPEM, err := st.ca.Issue(m.o.Hosts, now, m.o.CertValidity)
			if err != nil {
				return err
			}
			sec.Data[keyCert], sec.Data[keyKey] = certPEM, keyPEM
		}
		if client {
			certPEM, keyPEM, err := st.ca.IssueClient(m.o.ClientName, now, m.o.CertValidity)
			if err != nil {
				return err
			}
			sec.Data[KeyClientCert], sec.Data[KeyClientKey] = certPEM, keyPEM
		}
		if rotate {
			if sec.Annotations == nil {
				sec.Annotations = map[string]string{}
			}
			sec.Annotations[AnnotationRotated] = sec.Annotations[AnnotationRotate]
		}
		if sec, err = secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("store new certificates: %w", err)
		}
		m.o.Log.Info("new certificates", "serving", serving, "apiServerClient", client, "notAfter", now.Add(m.o.CertValidity).UTC().Format(time.RFC3339))
		if st, err = parseState(sec); err != nil {
			return err
		}
	}
	return m.writeFiles(st)
}

// newCA puts a fresh CA in front of the still valid trusted ones in sec.
// The serving certificate is left alone: it is renewed once the caBundle
// trusts the new CA.
func (m *Manager) newCA(st *state, sec *corev1.Secret) error {
	ca, err := certs.NewCA(caName, m.o.Now(), m.o.CAValidity)
	if err != nil {
		return err
	}
	trusted := append([]*x509.Certificate{ca.Cert}, st.trusted...)
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	sec.Data[keyTrusted] = encodeCerts(keepValid(trusted, m.o.Now()))
	sec.Data[keyCAKey] = ca.KeyPEM
	return nil
}

// certNeedsRenewal reports whether the serving certificate is missing,
// expiring, not signed by the signing CA, or not valid for every host.
func (m *Manager) certNeedsRenewal(st *state, now time.Time) bool {
	if st.cert == nil || expiring(st.cert, now, m.o.CertValidity) || st.cert.CheckSignatureFrom(st.ca.Cert) != nil {
		return true
	}
	for _, h := range m.o.Hosts {
		if st.cert.VerifyHostname(h) != nil {
			return true
		}
	}
	return false
}

// clientNeedsRenewal reports whether the API server's client certificate
// is missing, expiring, not signed by the signing CA, or for another name.
func (m *Manager) clientNeedsRenewal(st *state, now time.Time) bool {
	c := st.client
	return c == nil || expiring(c, now, m.o.CertValidity) || c.CheckSignatureFrom(st.ca.Cert) != nil || c.Subject.CommonName != m.o.ClientName
}

// revokeAfter is how long a serving certificate must have been in the
// Secret before the CAs before its own are revoked: two checks of every
// replica, and the certificate watcher's polling after them.
func (m *Manager) revokeAfter() time.Duration { return 2*m.o.Interval + 10*time.Second }

// notRevocable says why the CAs before the signing one cannot be revoked
// yet, or "" when they can: a replica may still serve, or the API server
// still present, a certificate that only they verify.
func (m *Manager) notRevocable(st *state, now time.Time) string {
	switch {
	case st.cert == nil || st.cert.CheckSignatureFrom(st.ca.Cert) != nil:
		return "the serving certificate is not from the signing CA yet"
	case m.o.ClientName != "" && (st.client == nil || st.client.CheckSignatureFrom(st.ca.Cert) != nil):
		return "the API server's client certificate is not from the signing CA yet"
	case now.Before(st.cert.NotBefore.Add(certs.Backdate + m.revokeAfter())):
		return fmt.Sprintf("replicas have until %s to load the serving certificate", st.cert.NotBefore.Add(certs.Backdate+m.revokeAfter()).UTC().Format(time.RFC3339))
	}
	return ""
}

// ensureCABundle sets every webhook's caBundle in the configuration to the
// trusted CAs, plus the CAs of this webhook's own it already holds that
// have not expired and were not revoked (a replica with a newer view of the
// Secret may have added them; one whose Secret was lost still serves
// from them), plus, with KeepForeignCAs, the others it holds.
func (m *Manager) ensureCABundle(ctx context.Context, trusted []*x509.Certificate, revoked []string, now time.Time) error {
	mwcs := m.o.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		mwc, err := mwcs.Get(ctx, m.o.WebhookConfiguration, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get MutatingWebhookConfiguration %s: %w", m.o.WebhookConfiguration, err)
		}
		all := slices.Clone(trusted)
		changed := false
		for _, w := range mwc.Webhooks {
			for _, c := range certs.ParseCertificates(w.ClientConfig.CABundle) {
				own := c.Subject.CommonName == caName && c.IsCA
				if own && !slices.Contains(revoked, fingerprint(c)) || !own && m.o.KeepForeignCAs {
					all = append(all, c)
				}
			}
		}
		bundle := encodeCerts(keepValid(all, now))
		for i := range mwc.Webhooks {
			if !bytes.Equal(mwc.Webhooks[i].ClientConfig.CABundle, bundle) {
				mwc.Webhooks[i].ClientConfig.CABundle = bundle
				changed = true
			}
		}
		if !changed {
			return nil
		}
		if _, err := mwcs.Update(ctx, mwc, metav1.UpdateOptions{}); err != nil {
			return err
		}
		m.o.Log.Info("caBundle updated", "webhookConfiguration", m.o.WebhookConfiguration)
		return nil
	})
}

// writeFiles writes the serving certificate, its key and the signing CA to
// the cert dir when they differ from what is there, and with ClientName the
// trusted CAs to FileClientCA, which the webhook re-reads on its own.
func (m *Manager) writeFiles(st *state) error {
	if m.o.ClientName != "" {
		bundle, path := encodeCerts(st.trusted), filepath.Join(m.o.CertDir, FileClientCA)
		if old, err := os.ReadFile(path); err != nil || !bytes.Equal(old, bundle) {
			if err := certs.WriteFile(path, bundle, 0o644); err != nil {
				return fmt.Errorf("write client CA to %s: %w", m.o.CertDir, err)
			}
		}
	}
	old, err := os.ReadFile(filepath.Join(m.o.CertDir, keyCert))
	if err == nil && bytes.Equal(old, st.certPEM) {
		return nil
	}
	b := certs.Bundle{CACert: st.ca.CertPEM, Cert: st.certPEM, Key: st.keyPEM}
	if err := b.WriteDir(m.o.CertDir); err != nil {
		return fmt.Errorf("write certificates to %s: %w", m.o.CertDir, err)
	}
	return nil
}

// parseState reads the Secret. The serving certificate may be missing.
func parseState(sec *corev1.Secret) (*state, error) {
	trusted := certs.ParseCertificates(sec.Data[keyTrusted])
	if len(trusted) == 0 {
		return &state{}, errors.New("no CA certificate")
	}
	ca, err := certs.ParseCA(encodeCerts(trusted[:1]), sec.Data[keyCAKey])
	if err != nil {
		return &state{trusted: trusted}, err
	}
	st := &state{ca: ca, trusted: trusted, certPEM: sec.Data[keyCert], keyPEM: sec.Data[keyKey]}
	if c := certs.ParseCertificates(st.certPEM); len(c) > 0 && len(st.keyPEM) > 0 {
		st.cert = c[0]
	}
	if c := certs.ParseCertificates(sec.Data[KeyClientCert]); len(c) > 0 && len(sec.Data[KeyClientKey]) > 0 {
		st.client = c[0]
	}
	return st, nil
}

// expiring reports whether less than a third of validity is left on c.
func expiring(c *x509.Certificate, now time.Time, validity time.Duration) bool {
	return now.Add(validity / 3).After(c.NotAfter)
}

// keepValid drops expired and duplicate certificates and keeps at most
// maxTrusted, in order.
func keepValid(cs []*x509.Certificate, now time.Time) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range cs {
		if now.After(c.NotAfter) || slices.ContainsFunc(out, c.Equal) {
			continue
		}
		if out = append(out, c); len(out) == maxTrusted {
			break
		}
	}
	return out
}

// fingerprint is c's SHA-256, hex: how AnnotationRevokedCAs names a CA.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

func encodeCerts(cs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range cs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}) // a bytes.Buffer does not fail
	}
	return b.Bytes()
}
