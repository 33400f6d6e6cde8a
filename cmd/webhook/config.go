package main

import (
	"errors"
	"fmt"
	"os"

	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/pkg/decrypt/keysource"
)

// Config API version and kind (DESIGN §4.1).
const (
	configAPIVersion = "sops-webhook.io/v1alpha1"
	configKind       = "Config"
)

// maxConfigSize caps the config file.
const maxConfigSize = 1 << 20

// config is the webhook's config file, owned by the cluster admin.
type config struct {
	APIVersion string      `json:"apiVersion"`
	Kind       string      `json:"kind"`
	Keys       []keyConfig `json:"keys"`
	// Policy is parsed so its presence is noticed; it is not enforced by
	// this version, which therefore refuses a config that has one.
	Policy []map[string]any `json:"policy,omitempty"`
}

// keyConfig is one named key. Exactly one source is set.
type keyConfig struct {
	Name          string         `json:"name"`
	Age           *ageConfig     `json:"age,omitempty"`
	PGP           *pgpConfig     `json:"pgp,omitempty"`
	AWSKMS        map[string]any `json:"awsKms,omitempty"`
	GCPKMS        map[string]any `json:"gcpKms,omitempty"`
	AzureKeyVault map[string]any `json:"azureKeyVault,omitempty"`
	VaultTransit  map[string]any `json:"vaultTransit,omitempty"`
}

type ageConfig struct {
	IdentityFile string `json:"identityFile"`
}

type pgpConfig struct {
	PrivateKeyFile string `json:"privateKeyFile"`
}

// loadConfig reads, strictly decodes and validates the config file. Errors
// name the file and the field, never key material.
func loadConfig(path string) (*config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(raw) > maxConfigSize {
		return nil, fmt.Errorf("config %s: larger than %d bytes", path, maxConfigSize)
	}
	doc, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	var c config
	strict, err := sigsjson.UnmarshalStrict(doc, &c)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("config %s: %w", path, errors.Join(strict...))
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

func (c *config) validate() error {
	var errs []error
	if c.APIVersion != configAPIVersion || c.Kind != configKind {
		errs = append(errs, fmt.Errorf("apiVersion/kind must be %s/%s", configAPIVersion, configKind))
	}
	if len(c.Keys) == 0 {
		errs = append(errs, errors.New("keys: at least one key is required"))
	}
	if len(c.Policy) > 0 {
		errs = append(errs, errors.New("policy: not supported by this version; remove it (every key is usable in every opted-in namespace) or upgrade"))
	}
	names := map[string]bool{}
	for i, k := range c.Keys {
		at := fmt.Sprintf("keys[%d]", i)
		if k.Name == "" {
			errs = append(errs, fmt.Errorf("%s.name: required", at))
		} else if names[k.Name] {
			errs = append(errs, fmt.Errorf("%s.name: %q is used twice", at, k.Name))
		}
		names[k.Name] = true
		set := 0
		for _, present := range []bool{k.Age != nil, k.PGP != nil, k.AWSKMS != nil, k.GCPKMS != nil, k.AzureKeyVault != nil, k.VaultTransit != nil} {
			if present {
				set++
			}
		}
		if set != 1 {
			errs = append(errs, fmt.Errorf("%s (%s): exactly one of age, pgp, awsKms, gcpKms, azureKeyVault, vaultTransit must be set", at, k.Name))
			continue
		}
		switch {
		case k.Age != nil && k.Age.IdentityFile == "":
			errs = append(errs, fmt.Errorf("%s.age.identityFile: required", at))
		case k.PGP != nil && k.PGP.PrivateKeyFile == "":
			errs = append(errs, fmt.Errorf("%s.pgp.privateKeyFile: required", at))
		case k.AWSKMS != nil, k.GCPKMS != nil, k.AzureKeyVault != nil, k.VaultTransit != nil:
			errs = append(errs, fmt.Errorf("%s (%s): cloud KMS and Vault key sources are not supported by this version", at, k.Name))
		}
	}
	return errors.Join(errs...)
}

// loadRing reads every configured key into memory, once.
func (c *config) loadRing() (*keysource.Ring, error) {
	var sources []keysource.Source
	for i, k := range c.Keys {
		var (
			s   keysource.Source
			err error
		)
		switch {
		case k.Age != nil:
			s, err = keysource.LoadAge(k.Name, k.Age.IdentityFile)
		case k.PGP != nil:
			s, err = keysource.LoadPGP(k.Name, k.PGP.PrivateKeyFile)
		}
		if err != nil {
			return nil, fmt.Errorf("keys[%d] (%s): %w", i, k.Name, err)
		}
		sources = append(sources, s)
	}
	return keysource.NewRing(sources...)
}
