package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
)

func (o *options) sopsConfigCmd(s streams) *cobra.Command {
	var (
		contexts     []string
		pathTemplate string
		breakGlass   []string
	)
	cmd := &cobra.Command{
		Use:   "sops-config [--context NAME]... [--path-regex TEMPLATE] [--break-glass RECIPIENT]...",
		Short: "Write .sops.yaml creation rules for one or more clusters",
		Long: "Prints .sops.yaml creation rules from the recipients each cluster's webhook publishes: one rule per namespace\n" +
			"pattern a key is granted to, encrypting for the current recipients of every key granted there in every\n" +
			"cluster named by --context (repeat it to encrypt once for many clusters), and for each --break-glass\n" +
			"recipient. --path-regex is the rule's path_regex, {namespace} standing for the namespace.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !strings.Contains(pathTemplate, "{namespace}") {
				return fmt.Errorf("--path-regex %q: it must contain {namespace}", pathTemplate)
			}
			if len(contexts) == 0 {
				contexts = []string{""} // the kubeconfig's current context
			}
			var all []clusterkeys.Recipients
			for _, name := range contexts {
				kube, err := o.clientFor(name)
				if err != nil {
					return fmt.Errorf("context %q: %w", name, err)
				}
				pub, err := o.readRecipients(cmd.Context(), kube)
				if err != nil {
					return fmt.Errorf("context %q: %w", name, err)
				}
				all = append(all, pub)
			}
			return writeSopsConfig(s, clusterkeys.Merge(all...).CreationRulesWith(pathTemplate, breakGlass))
		},
	}
	// The plugin's own --context, repeatable, stands in for kubectl's.
	cmd.Flags().StringArrayVar(&contexts, "context", nil, "a kubeconfig context to read recipients from; repeat it for several clusters (default: the current context)")
	cmd.Flags().StringVar(&pathTemplate, "path-regex", clusterkeys.DefaultPathTemplate, "the path_regex of a namespace's files; {namespace} stands for the namespace")
	cmd.Flags().StringArrayVar(&breakGlass, "break-glass", nil, "an age recipient (kept offline) every file is also encrypted for; repeatable")
	return cmd
}

// clientFor returns a clientset for the kubeconfig context name ("" the
// current one), with the other connection flags as given.
func (o *options) clientFor(name string) (kubernetes.Interface, error) {
	if name == "" {
		return o.client()
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if p := o.kube.KubeConfig; p != nil && *p != "" {
		rules.ExplicitPath = *p
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: name}).ClientConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// writeSopsConfig prints rules as a .sops.yaml file.
func writeSopsConfig(s streams, rules clusterkeys.SopsConfig) error {
	if len(rules.CreationRules) == 0 {
		return fmt.Errorf("no key with a recipient is granted to a namespace by name")
	}
	fmt.Fprintln(s.out, "# .sops.yaml written by kubectl sops-webhook sops-config")
	enc := yaml.NewEncoder(s.out)
	enc.SetIndent(2)
	if err := enc.Encode(rules); err != nil {
		return err
	}
	return enc.Close()
}
