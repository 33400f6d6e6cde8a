package sopskit

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Recipients selects the keys a document is encrypted for with the sops CLI.
type Recipients struct {
	Age []AgeKey
	PGP []PGPKey
	// VaultTransit are transit key URIs, https://HOST/v1/ENGINE/keys/NAME.
	VaultTransit []string
	// KMS are AWS KMS key ARNs.
	KMS []string
	// Env is extra environment for sops, e.g. VAULT_TOKEN and VAULT_CACERT.
	Env []string
}

func (r Recipients) args() []string {
	var args []string
	if len(r.Age) > 0 {
		var rs []string
		for _, k := range r.Age {
			rs = append(rs, k.Recipient)
		}
		args = append(args, "--age", strings.Join(rs, ","))
	}
	if len(r.PGP) > 0 {
		var fs []string
		for _, k := range r.PGP {
			fs = append(fs, k.Fingerprint)
		}
		args = append(args, "--pgp", strings.Join(fs, ","))
	}
	if len(r.KMS) > 0 {
		args = append(args, "--kms", strings.Join(r.KMS, ","))
	}
	if len(r.VaultTransit) > 0 {
		args = append(args, "--hc-vault-transit", strings.Join(r.VaultTransit, ","))
	}
	return args
}

// sopsEnv is a clean environment for the sops CLI: no inherited key
// variables, a throwaway HOME, and GNUPGHOME pointing at the PGP keys.
func sopsEnv(t testing.TB, r Recipients, extra ...string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	if len(r.PGP) > 0 {
		env = append(env, "GNUPGHOME="+r.PGP[0].GnupgHome)
	}
	env = append(env, r.Env...)
	return append(env, extra...)
}

// SopsEncrypt encrypts plaintext with the real sops CLI as a file of the given
// format ("yaml", "json", "dotenv", "ini" or "binary") and returns what it
// prints. extraArgs go before the file name (e.g. --encrypted-regex).
func SopsEncrypt(t testing.TB, plaintext []byte, format string, r Recipients, extraArgs ...string) []byte {
	t.Helper()
	tools := Need(t, "the sops CLI", func(t Tools) string { return t.Sops })
	dir := t.TempDir()
	in := writeTemp(t, dir, "plain", plaintext)
	args := append([]string{"encrypt", "--input-type", format, "--output-type", format}, r.args()...)
	args = append(args, extraArgs...)
	args = append(args, in)
	return runSops(t, tools.Sops, dir, sopsEnv(t, r), args)
}

// SopsDecrypt decrypts an encrypted file with the real sops CLI, holding the
// given identity files, and returns what it prints: the reference output the
// webhook must reproduce byte for byte.
func SopsDecrypt(t testing.TB, encrypted []byte, format string, r Recipients) []byte {
	t.Helper()
	tools := Need(t, "the sops CLI", func(t Tools) string { return t.Sops })
	dir := t.TempDir()
	in := writeTemp(t, dir, "enc", encrypted)
	var extra []string
	if len(r.Age) > 0 {
		var all []byte
		for _, k := range r.Age {
			b, err := os.ReadFile(k.IdentityFile)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, b...)
		}
		extra = append(extra, "SOPS_AGE_KEY_FILE="+writeTemp(t, dir, "keys.txt", all))
	}
	args := []string{"decrypt", "--input-type", format, "--output-type", format, in}
	return runSops(t, tools.Sops, dir, sopsEnv(t, r, extra...), args)
}

func runSops(t testing.TB, bin, dir string, env, args []string) []byte {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("sops %s: %v: %s", args[0], err, stderr.String())
	}
	return stdout.Bytes()
}

// SopsEncryptGroups encrypts plaintext with the sops CLI for age key groups
// combined by Shamir secret sharing with the given threshold, through a
// .sops.yaml creation rule (the only way the CLI makes several groups).
func SopsEncryptGroups(t testing.TB, plaintext []byte, format string, groups [][]AgeKey, threshold int) []byte {
	t.Helper()
	tools := Need(t, "the sops CLI", func(t Tools) string { return t.Sops })
	dir := t.TempDir()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "creation_rules:\n  - shamir_threshold: %d\n    key_groups:\n", threshold)
	for _, g := range groups {
		cfg.WriteString("      - age:\n")
		for _, k := range g {
			fmt.Fprintf(&cfg, "          - %s\n", k.Recipient)
		}
	}
	writeTemp(t, dir, ".sops.yaml", []byte(cfg.String()))
	in := writeTemp(t, dir, "plain", plaintext)
	args := []string{"encrypt", "--input-type", format, "--output-type", format, in}
	return runSops(t, tools.Sops, dir, sopsEnv(t, Recipients{}), args)
}

// writeTemp writes data to dir/name with mode 0600 and returns the path.
func writeTemp(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
