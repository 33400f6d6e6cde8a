package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/metadata"

	"github.com/sops-webhook/sops-webhook/pkg/clusterkeys"
)

// generationUse is one row of `keys`: a key's generation and the objects
// whose sops-webhook.io/keys annotation names it.
type generationUse struct {
	Key        string           `json:"key"`
	Source     string           `json:"source"`
	Generation int              `json:"generation,omitempty"`
	Type       clusterkeys.Type `json:"type,omitempty"`
	State      string           `json:"state,omitempty"`
	Created    string           `json:"created,omitempty"`
	Recipient  string           `json:"recipient,omitempty"`
	Secrets    int              `json:"secrets"`
	ConfigMaps int              `json:"configMaps"`
}

// objectRef names an object in messages.
type objectRef struct{ kind, namespace, name string }

func (r objectRef) String() string { return r.kind + " " + r.namespace + "/" + r.name }

// listPage is how many objects' metadata one list call returns.
const listPage = 500

// usage lists, by entry of the sops-webhook.io/keys annotation ("key" or
// "key@generation"), the Secrets and ConfigMaps of the cluster that name
// it. Only metadata is read: no Secret's data.
func (o *options) usage(ctx context.Context) (map[string][]objectRef, error) {
	cfg, err := o.restConfig()
	if err != nil {
		return nil, err
	}
	md, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	out := map[string][]objectRef{}
	for _, kind := range []string{"Secret", "ConfigMap"} {
		res := schema.GroupVersionResource{Version: "v1", Resource: strings.ToLower(kind) + "s"}
		opts := metav1.ListOptions{Limit: listPage}
		for {
			list, err := md.Resource(res).Namespace(metav1.NamespaceAll).List(ctx, opts)
			if err != nil {
				return nil, fmt.Errorf("list %s metadata: %w", res.Resource, err)
			}
			for _, item := range list.Items {
				for _, entry := range strings.Split(item.Annotations[annotationKeys], ",") {
					if entry = strings.TrimSpace(entry); entry != "" {
						out[entry] = append(out[entry], objectRef{kind, item.Namespace, item.Name})
					}
				}
			}
			if opts.Continue = list.Continue; opts.Continue == "" {
				break
			}
		}
	}
	return out, nil
}

// count returns how many of refs are of kind.
func count(refs []objectRef, kind string) int {
	n := 0
	for _, r := range refs {
		if r.kind == kind {
			n++
		}
	}
	return n
}

func (o *options) keysCmd(s streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Each key, its generations, and how many objects each last decrypted",
		Long: "Lists each published key and its generations, and for each how many Secrets and ConfigMaps in the cluster\n" +
			"were last decrypted with it (their " + annotationKeys + " annotation): what to check before retiring one.\n" +
			"Needs list on Secrets and ConfigMaps cluster-wide; only their metadata is read.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, pub, err := o.published(cmd.Context())
			if err != nil {
				return err
			}
			used, err := o.usage(cmd.Context())
			if err != nil {
				return err
			}
			var rows []generationUse
			for _, k := range pub.Keys {
				if len(k.Generations) == 0 {
					refs := used[k.Name]
					rows = append(rows, generationUse{Key: k.Name, Source: k.Source, Secrets: count(refs, "Secret"), ConfigMaps: count(refs, "ConfigMap")})
					continue
				}
				for _, g := range k.Generations {
					refs := used[k.Name+"@"+strconv.Itoa(g.Number)]
					rows = append(rows, generationUse{Key: k.Name, Source: k.Source, Generation: g.Number, Type: g.Type, State: string(g.State),
						Created: g.Created.UTC().Format("2006-01-02T15:04:05Z"), Recipient: g.Recipient, Secrets: count(refs, "Secret"), ConfigMaps: count(refs, "ConfigMap")})
				}
			}
			return o.print(s.out, rows, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "KEY\tGENERATION\tSTATE\tCREATED\tSECRETS\tCONFIGMAPS")
				for _, r := range rows {
					gen, state, created := "-", "-", "-"
					if r.Generation > 0 {
						gen, state, created = strconv.Itoa(r.Generation), r.State, r.Created
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\n", r.Key, gen, state, created, r.Secrets, r.ConfigMaps)
				}
				return tw.Flush()
			})
		},
	}
	o.addOutput(cmd)
	return cmd
}

// maxNamed caps how many objects a refusal names.
const maxNamed = 10

func (o *options) retireCmd(s streams) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "retire KEY@GENERATION",
		Short: "Stop a generation of a generated key from decrypting",
		Long: "Asks the webhook to retire the generation: it no longer decrypts; its identity stays in the Secret. Refused\n" +
			"while Secrets or ConfigMaps were last decrypted with it (kubectl sops-webhook keys), unless --force:\n" +
			"rewrap their files first. Retiring the current generation makes a new one current.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, num, ok := strings.Cut(args[0], "@")
			n, err := strconv.Atoi(num)
			if !ok || err != nil {
				return fmt.Errorf("%q: want KEY@GENERATION, as kubectl sops-webhook keys lists them", args[0])
			}
			_, pub, err := o.published(cmd.Context())
			if err != nil {
				return err
			}
			if err := hasGeneration(pub, name, n); err != nil {
				return err
			}
			used, err := o.usage(cmd.Context())
			if err != nil {
				return err
			}
			if refs := used[args[0]]; len(refs) > 0 && !force {
				sort.Slice(refs, func(i, j int) bool { return refs[i].String() < refs[j].String() })
				var names []string
				for _, r := range refs[:min(len(refs), maxNamed)] {
					names = append(names, r.String())
				}
				if len(refs) > maxNamed {
					names = append(names, fmt.Sprintf("and %d more", len(refs)-maxNamed))
				}
				return fmt.Errorf("%s still decrypted %d objects: %s; rewrap their files (kubectl sops-webhook rewrap) and apply them, or pass --force", args[0], len(refs), strings.Join(names, ", "))
			}
			if err := o.request(cmd.Context(), clusterkeys.AnnotationRetire, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(s.out, "requested: %s retires at the webhook's next config check\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "retire even while objects were last decrypted with it")
	return cmd
}

func (o *options) rotateCmd(s streams) *cobra.Command {
	return &cobra.Command{
		Use:   "rotate KEY",
		Short: "Make a new generation of a generated key current now",
		Long: "Asks the webhook for a new current generation of KEY; the one before keeps decrypting until retired.\n" +
			"The webhook generates it in the cluster at its next config check.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, pub, err := o.published(cmd.Context())
			if err != nil {
				return err
			}
			if err := hasGeneration(pub, args[0], 0); err != nil {
				return err
			}
			if err := o.request(cmd.Context(), clusterkeys.AnnotationRotate, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(s.out, "requested: %s gets a new generation at the webhook's next config check\n", args[0])
			return nil
		},
	}
}

// hasGeneration checks that name is a published generated key with
// generation n (0: any).
func hasGeneration(pub clusterkeys.Recipients, name string, n int) error {
	for _, k := range pub.Keys {
		if k.Name != name {
			continue
		}
		if k.Source != "generated" {
			return fmt.Errorf("key %q is not generated in the cluster: it has no generations", name)
		}
		for _, g := range k.Generations {
			if n == 0 || g.Number == n {
				return nil
			}
		}
		return fmt.Errorf("key %q has no generation %d", name, n)
	}
	return fmt.Errorf("key %q is not published by the webhook", name)
}

// request adds entry to the annotation of the generated keys' Secret,
// reading and patching only its metadata.
func (o *options) request(ctx context.Context, annotation, entry string) error {
	cfg, err := o.restConfig()
	if err != nil {
		return err
	}
	md, err := metadata.NewForConfig(cfg)
	if err != nil {
		return err
	}
	secrets := md.Resource(schema.GroupVersionResource{Version: "v1", Resource: "secrets"}).Namespace(o.webhookNamespace)
	obj, err := secrets.Get(ctx, o.secret, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("Secret %s/%s: %w", o.webhookNamespace, o.secret, err)
	}
	value := entry
	if prev := obj.Annotations[annotation]; prev != "" {
		value = prev + "," + entry
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": obj.ResourceVersion, "annotations": map[string]string{annotation: value},
	}})
	if err != nil {
		return err
	}
	if _, err := secrets.Patch(ctx, o.secret, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("Secret %s/%s: %w", o.webhookNamespace, o.secret, err)
	}
	return nil
}
