package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
)

// streams are the plugin's standard streams.
type streams struct {
	in          io.Reader
	out, errOut io.Writer
}

// options are the flags every subcommand shares.
type options struct {
	kube *genericclioptions.ConfigFlags
	// webhookNamespace holds the recipients ConfigMap and the keys Secret.
	webhookNamespace string
	configMap        string
	secret           string
	output           string
}

// newRoot returns the plugin's command tree, writing to s.
func newRoot(s streams) *cobra.Command {
	o := &options{kube: genericclioptions.NewConfigFlags(true)}
	root := &cobra.Command{
		Use:           "kubectl-sops_webhook",
		Short:         "The user's side of sops-webhook's keys born in the cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	o.kube.AddFlags(root.PersistentFlags())
	root.PersistentFlags().StringVar(&o.webhookNamespace, "webhook-namespace", "sops-webhook", "the namespace the webhook runs in")
	root.PersistentFlags().StringVar(&o.configMap, "recipients-configmap", clusterkeys.DefaultConfigMapName, "the ConfigMap where the webhook publishes its recipients")
	root.PersistentFlags().StringVar(&o.secret, "generated-keys-secret", clusterkeys.DefaultSecretName, "the Secret of the generated keys (rotate and retire annotate it; its data is never read)")
	root.AddCommand(o.recipientsCmd(s), o.sopsConfigCmd(s), o.rewrapCmd(s), o.keysCmd(s), o.rotateCmd(s), o.retireCmd(s))
	return root
}

// addOutput adds -o to cmd.
func (o *options) addOutput(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "output format: yaml or json (default: a table)")
}

// restConfig is the REST config of the kubeconfig and context the flags
// name.
func (o *options) restConfig() (*rest.Config, error) { return o.kube.ToRESTConfig() }

// client returns a clientset for the flags' context.
func (o *options) client() (kubernetes.Interface, error) {
	cfg, err := o.restConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// namespace is the -n namespace, else the context's.
func (o *options) namespace() (string, error) {
	ns, _, err := o.kube.ToRawKubeConfigLoader().Namespace()
	return ns, err
}

// published returns a clientset for the flags' context and the
// recipients its webhook publishes.
func (o *options) published(ctx context.Context) (kubernetes.Interface, clusterkeys.Recipients, error) {
	kube, err := o.client()
	if err != nil {
		return nil, clusterkeys.Recipients{}, err
	}
	pub, err := o.readRecipients(ctx, kube)
	return kube, pub, err
}

// readRecipients reads the published recipients with kube.
func (o *options) readRecipients(ctx context.Context, kube kubernetes.Interface) (clusterkeys.Recipients, error) {
	var r clusterkeys.Recipients
	cm, err := kube.CoreV1().ConfigMaps(o.webhookNamespace).Get(ctx, o.configMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return r, fmt.Errorf("ConfigMap %s/%s not found: is sops-webhook installed there (--webhook-namespace)?", o.webhookNamespace, o.configMap)
	}
	if err != nil {
		return r, err
	}
	if err := yaml.Unmarshal([]byte(cm.Data[clusterkeys.RecipientsEntry]), &r); err != nil {
		return r, fmt.Errorf("ConfigMap %s/%s: %s: %w", o.webhookNamespace, o.configMap, clusterkeys.RecipientsEntry, err)
	}
	return r, nil
}

// print writes v as -o asks: YAML, JSON, or, by default, table().
func (o *options) print(out io.Writer, v any, table func(io.Writer) error) error {
	switch o.output {
	case "":
		return table(out)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = out.Write(b)
		return err
	case "json":
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "%s\n", b)
		return err
	}
	return fmt.Errorf("--output %q: want yaml or json", o.output)
}
