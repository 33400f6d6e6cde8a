package keysource

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/getsops/sops/v3/keyservice"
)

// AWSKMSConfig configures an AWS KMS key source.
type AWSKMSConfig struct {
	// ARN is a glob (path.Match) of the key ARNs this source may use, e.g.
	// arn:aws:kms:eu-west-1:111122223333:key/*.
	ARN string
	// Endpoint, if set, replaces the KMS endpoint (a VPC or FIPS endpoint).
	Endpoint string
}

// AWSKMS is a Source that unwraps data keys with AWS KMS as the pod's own
// AWS identity: the SDK's default credential chain, which is IRSA
// (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE) or EKS Pod Identity in a
// pod. The role and profile a payload's metadata names are never used, and
// no shared config or credentials file is read.
type AWSKMS struct {
	name string
	cfg  AWSKMSConfig
	arns glob
	aws  aws.Config

	mu      sync.Mutex
	clients map[string]*kms.Client // by region
}

// NewAWSKMS returns an AWS KMS source. It does not contact AWS.
func NewAWSKMS(ctx context.Context, name string, cfg AWSKMSConfig) (*AWSKMS, error) {
	if !strings.HasPrefix(cfg.ARN, "arn:") {
		return nil, fmt.Errorf("awsKms arn %q: must be a key ARN or a glob of key ARNs", cfg.ARN)
	}
	arns, err := newGlob("awsKms arn", cfg.ARN)
	if err != nil {
		return nil, err
	}
	ac, err := awsconfig.LoadDefaultConfig(ctx,
		// No ~/.aws/config or ~/.aws/credentials: the pod's identity only.
		awsconfig.WithSharedConfigFiles([]string{}),
		awsconfig.WithSharedCredentialsFiles([]string{}),
		awsconfig.WithRetryMaxAttempts(2),
		awsconfig.WithHTTPClient(awshttp.NewBuildableClient().WithTimeout(CallTimeout)),
	)
	if err != nil {
		return nil, fmt.Errorf("aws config: %w", err)
	}
	return &AWSKMS{name: name, cfg: cfg, arns: arns, aws: ac, clients: map[string]*kms.Client{}}, nil
}

// Name returns the key's configured name.
func (a *AWSKMS) Name() string { return a.name }

// Matches reports whether the metadata names a key ARN the config allows.
func (a *AWSKMS) Matches(key *keyservice.Key) bool {
	k := key.GetKmsKey()
	return k != nil && a.arns.match(k.Arn)
}

// Unwrap decrypts the data key with the KMS key the metadata names, if the
// config allows its ARN, passing the encryption context through.
func (a *AWSKMS) Unwrap(ctx context.Context, key *keyservice.Key, ciphertext []byte) ([]byte, error) {
	if !a.Matches(key) {
		return nil, ErrNotHeld
	}
	k := key.GetKmsKey()
	region, err := arnRegion(k.Arn)
	if err != nil {
		return nil, err
	}
	blob, err := base64.StdEncoding.DecodeString(string(ciphertext))
	if err != nil {
		return nil, errors.New("aws kms: the wrapped data key is not base64")
	}
	c, err := a.client(region)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	out, err := c.Decrypt(ctx, &kms.DecryptInput{
		KeyId:             aws.String(k.Arn),
		CiphertextBlob:    blob,
		EncryptionContext: k.Context,
	})
	if err != nil {
		return nil, remoteError("aws kms decrypt", err)
	}
	return out.Plaintext, nil
}

// maxRegionClients caps the regional clients one AWS KMS key keeps: more
// than AWS has regions. They share the config's HTTP client and its
// connection pool.
const maxRegionClients = 40

// awsRegion is the form of an AWS region name (eu-west-1, us-gov-east-1).
var awsRegion = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`)

// client returns the KMS client of region, made on first use. A region
// the allow-list's glob let through must still look like one, and at most
// maxRegionClients are made, so a payload cannot make the webhook build
// and keep clients by the thousand.
func (a *AWSKMS) client(region string) (*kms.Client, error) {
	if !awsRegion.MatchString(region) {
		return nil, fmt.Errorf("aws kms: %.40q is not a region name", region)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.clients[region]
	if !ok {
		if len(a.clients) >= maxRegionClients {
			return nil, fmt.Errorf("aws kms: more than %d regions used", maxRegionClients)
		}
		c = kms.NewFromConfig(a.aws, func(o *kms.Options) {
			o.Region = region
			if a.cfg.Endpoint != "" {
				o.BaseEndpoint = aws.String(a.cfg.Endpoint)
			}
		})
		a.clients[region] = c
	}
	return c, nil
}

// arnRegion returns the region of a KMS key ARN,
// arn:PARTITION:kms:REGION:ACCOUNT:key/ID.
func arnRegion(arn string) (string, error) {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[2] != "kms" || parts[3] == "" {
		return "", fmt.Errorf("aws kms: %q is not a KMS key ARN", arn)
	}
	return parts[3], nil
}
