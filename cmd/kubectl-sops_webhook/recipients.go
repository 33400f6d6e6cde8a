package main

import (
	"context"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
)

// recipient is one recipient a namespace may encrypt for.
type recipient struct {
	Key        string   `json:"key"`
	Source     string   `json:"source"`
	Generation int      `json:"generation,omitempty"`
	Recipient  string   `json:"recipient"`
	Kinds      []string `json:"kinds"`
	// Maybe is set when a grant by namespaceSelector could not be
	// checked: the namespace's labels were not readable.
	Maybe bool `json:"maybe,omitempty"`
}

func (o *options) recipientsCmd(s streams) *cobra.Command {
	var ageOnly bool
	cmd := &cobra.Command{
		Use:   "recipients [-n NAMESPACE]",
		Short: "The recipients to encrypt for, for files meant for NAMESPACE",
		Long: "Lists, from the ConfigMap the webhook publishes, the current recipient of each key granted in NAMESPACE (default: the context's):\n" +
			"pass them to sops encrypt --age (or --pgp), or write .sops.yaml with sops-config.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			kube, pub, err := o.published(cmd.Context())
			if err != nil {
				return err
			}
			list := forNamespace(pub, ns, namespaceLabels(cmd.Context(), kube, ns))
			if ageOnly {
				var ages []string
				for _, r := range list {
					if r.Source != "pgp" {
						ages = append(ages, r.Recipient)
					}
				}
				if len(ages) == 0 {
					return fmt.Errorf("no age recipient is granted in namespace %s", ns)
				}
				_, err := fmt.Fprintln(s.out, strings.Join(ages, ","))
				return err
			}
			return o.print(s.out, list, func(w io.Writer) error {
				if len(list) == 0 {
					_, err := fmt.Fprintf(w, "no key is granted in namespace %s\n", ns)
					return err
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "KEY\tGENERATION\tKINDS\tRECIPIENT")
				for _, r := range list {
					gen := "-"
					if r.Generation > 0 {
						gen = fmt.Sprint(r.Generation)
					}
					kinds := fmt.Sprint(r.Kinds)
					if r.Maybe {
						kinds += " (if its labels match)"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Key, gen, kinds, r.Recipient)
				}
				return tw.Flush()
			})
		},
	}
	o.addOutput(cmd)
	cmd.Flags().BoolVar(&ageOnly, "age", false, `print only the age recipients, comma separated, for sops encrypt --age "$(kubectl sops-webhook recipients --age)"`)
	return cmd
}

// namespaceLabels returns ns's labels, or nil when they cannot be read.
func namespaceLabels(ctx context.Context, kube kubernetes.Interface, ns string) labels.Set {
	n, err := kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return labels.Set(n.Labels)
}

// forNamespace returns the current recipients of the keys pub grants in
// ns, whose labels are nsLabels (nil: unknown).
func forNamespace(pub clusterkeys.Recipients, ns string, nsLabels labels.Set) []recipient {
	var out []recipient
	for _, k := range pub.Keys {
		var kinds []string
		maybe := false
		for _, g := range k.Grants {
			granted := false
			for _, p := range g.Namespaces {
				if ok, _ := path.Match(p, ns); ok {
					granted = true
				}
			}
			if g.NamespaceSelector != "" {
				sel, err := labels.Parse(g.NamespaceSelector)
				switch {
				case err != nil:
				case nsLabels == nil:
					granted, maybe = true, true
				case sel.Matches(nsLabels):
					granted = true
				}
			}
			for _, k := range g.Kinds {
				if granted && !slices.Contains(kinds, k) {
					kinds = append(kinds, k)
				}
			}
		}
		if len(kinds) == 0 {
			continue
		}
		for _, g := range k.Generations {
			if g.State == clusterkeys.StateCurrent {
				out = append(out, recipient{Key: k.Name, Source: k.Source, Generation: g.Number, Recipient: g.Recipient, Kinds: kinds, Maybe: maybe})
			}
		}
		for _, r := range append(append([]string(nil), k.Age...), k.PGP...) {
			out = append(out, recipient{Key: k.Name, Source: k.Source, Recipient: r, Kinds: kinds, Maybe: maybe})
		}
	}
	return out
}
