package gitops

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/kube-openapi/pkg/util/proto"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
	"sigs.k8s.io/structured-merge-diff/v6/typed"
)

// This file is an emulation of Argo CD, not Argo CD: the gitops-engine
// module does not build from the module proxy here. It re-implements, from
// gitops-engine's pkg/diff as of Argo CD v3.5.1 (and v3.4.7, v3.3.14, which
// carry the same fixes for argo-cd issue #25260), the steps that decide
// whether a resource an Application manages is OutOfSync under
// ServerSideDiff, so that the tests can show what Argo CD reports for the
// objects this webhook mutates.

// ArgoCDManager is the field manager Argo CD's application controller
// applies and dry-runs with.
const ArgoCDManager = "argocd-controller"

// Argo CD's annotations.
const (
	ArgoCDCompareOptions = "argocd.argoproj.io/compare-options"
	ArgoCDTrackingID     = "argocd.argoproj.io/tracking-id"
	lastApplied          = "kubectl.kubernetes.io/last-applied-configuration"
)

// CompareOptions are the options of the compare-options annotation that
// the emulation understands.
type CompareOptions struct {
	ServerSideDiff         bool
	IncludeMutationWebhook bool
}

// ParseCompareOptions reads an argocd.argoproj.io/compare-options value
// ("ServerSideDiff=true,IncludeMutationWebhook=true").
func ParseCompareOptions(v string) CompareOptions {
	var o CompareOptions
	for _, opt := range strings.Split(v, ",") {
		k, val, _ := strings.Cut(strings.TrimSpace(opt), "=")
		on := strings.EqualFold(val, "true")
		switch k {
		case "ServerSideDiff":
			o.ServerSideDiff = on
		case "IncludeMutationWebhook":
			o.IncludeMutationWebhook = on
		}
	}
	return o
}

// ArgoCD is the emulated application controller of one Application.
type ArgoCD struct {
	c      client.Client
	parser *managedfields.GvkParser
	app    string
}

// NewArgoCD builds the emulation for Application app against the API
// server of cfg. Like Argo CD's cluster cache, it reads the API server's
// OpenAPI v2 schema into the parser that server-side apply uses too.
func NewArgoCD(cfg *rest.Config, c client.Client, app string) (*ArgoCD, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	doc, err := dc.OpenAPISchema()
	if err != nil {
		return nil, fmt.Errorf("read the openapi schema: %w", err)
	}
	models, err := proto.NewOpenAPIData(doc)
	if err != nil {
		return nil, err
	}
	parser, err := managedfields.NewGVKParser(models, false)
	if err != nil {
		return nil, err
	}
	return &ArgoCD{c: c, parser: parser, app: app}, nil
}

// Track sets the tracking annotation Argo CD (annotation tracking, its
// default since v3.0) puts on every manifest before it applies or diffs it.
func (a *ArgoCD) Track(obj *unstructured.Unstructured) {
	ann := obj.GetAnnotations()
	if ann == nil {
		ann = map[string]string{}
	}
	gvk := obj.GroupVersionKind()
	ann[ArgoCDTrackingID] = fmt.Sprintf("%s:%s/%s:%s/%s", a.app, gvk.Group, gvk.Kind, obj.GetNamespace(), obj.GetName())
	obj.SetAnnotations(ann)
}

// DiffResult is gitops-engine's result of one resource's diff: both sides
// normalized and marshalled, and whether they differ. Modified is decided
// on the raw bytes, before any masking.
type DiffResult struct {
	Modified       bool
	PredictedLive  []byte
	NormalizedLive []byte
}

// ServerSideDiff diffs config against the live object the way Argo CD does
// under ServerSideDiff=true: a server-side apply dry run of config as
// argocd-controller (through the admission chain, so through this webhook),
// then, unless o.IncludeMutationWebhook, every field of the result that
// argocd-controller does not own reverted to live; both sides normalized
// (creationTimestamp, Secret stringData folded into data, managedFields and
// last-applied-configuration dropped) and compared as JSON.
func (a *ArgoCD) ServerSideDiff(ctx context.Context, config *unstructured.Unstructured, o CompareOptions) (DiffResult, error) {
	live := &unstructured.Unstructured{}
	live.SetGroupVersionKind(config.GroupVersionKind())
	if err := a.c.Get(ctx, client.ObjectKeyFromObject(config), live); err != nil {
		return DiffResult{}, fmt.Errorf("get live %s: %w", config.GetName(), err)
	}
	predicted := config.DeepCopy()
	if err := a.c.Patch(ctx, predicted, client.Apply, client.DryRunAll, client.FieldOwner(ArgoCDManager), client.ForceOwnership); err != nil {
		return DiffResult{}, fmt.Errorf("dry-run apply %s: %w", config.GetName(), err)
	}
	if !o.IncludeMutationWebhook {
		var err error
		if predicted, err = a.removeWebhookMutation(predicted, live); err != nil {
			return DiffResult{}, fmt.Errorf("remove webhook mutations of %s: %w", config.GetName(), err)
		}
	}
	p, err := argoNormalized(predicted)
	if err != nil {
		return DiffResult{}, err
	}
	l, err := argoNormalized(live)
	if err != nil {
		return DiffResult{}, err
	}
	return DiffResult{Modified: !bytes.Equal(p, l), PredictedLive: p, NormalizedLive: l}, nil
}

// removeWebhookMutation keeps of predicted only the fields argocd-controller
// manages there, and takes every other field from live: so a field a
// mutating webhook set, and argocd-controller does not own, shows live's
// value. Fields whose removal would break the schema stay.
func (a *ArgoCD) removeWebhookMutation(predicted, live *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	gvk := predicted.GroupVersionKind()
	pt := a.parser.Type(gvk)
	if pt == nil {
		return nil, fmt.Errorf("no schema for %s", gvk)
	}
	owned := &fieldpath.Set{}
	for _, mf := range predicted.GetManagedFields() {
		if mf.Manager != ArgoCDManager || mf.FieldsV1 == nil {
			continue
		}
		s := &fieldpath.Set{}
		if err := s.FromJSON(bytes.NewReader(mf.FieldsV1.Raw)); err != nil {
			return nil, err
		}
		owned = owned.Union(s)
	}
	if owned.Empty() {
		return nil, fmt.Errorf("%s owns no field", ArgoCDManager)
	}
	tp, err := pt.FromUnstructured(predicted.Object)
	if err != nil {
		return nil, err
	}
	tl, err := pt.FromUnstructured(live.Object)
	if err != nil {
		return nil, err
	}
	all, err := tp.ToFieldSet()
	if err != nil {
		return nil, err
	}
	remove := removable(tp, all.Difference(owned))
	merged, err := tl.Merge(tp.RemoveItems(remove))
	if err != nil {
		return nil, err
	}
	obj, ok := merged.AsValue().Unstructured().(map[string]any)
	if !ok {
		return nil, fmt.Errorf("merged %s is not an object", gvk)
	}
	return &unstructured.Unstructured{Object: obj}, nil
}

// removable returns the fields of set whose removal from tv leaves a valid
// object: all of them when that holds for the whole set, else those that
// may go one by one.
func removable(tv *typed.TypedValue, set *fieldpath.Set) *fieldpath.Set {
	if tv.RemoveItems(set).Validate() == nil {
		return set
	}
	ok := fieldpath.NewSet()
	set.Iterate(func(p fieldpath.Path) {
		if tv.RemoveItems(fieldpath.NewSet(p)).Validate() == nil {
			ok.Insert(p)
		}
	})
	return ok
}

// argoNormalized is one side of the comparison, normalized and marshalled
// with sorted keys.
func argoNormalized(obj *unstructured.Unstructured) ([]byte, error) {
	obj = obj.DeepCopy()
	unstructured.RemoveNestedField(obj.Object, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(obj.Object, "metadata", "managedFields")
	unstructured.RemoveNestedField(obj.Object, "metadata", "annotations", lastApplied)
	if ann, found, _ := unstructured.NestedMap(obj.Object, "metadata", "annotations"); found && len(ann) == 0 {
		unstructured.RemoveNestedField(obj.Object, "metadata", "annotations")
	}
	if obj.GetKind() == "Secret" {
		if sd, found, _ := unstructured.NestedStringMap(obj.Object, "stringData"); found {
			data, _, _ := unstructured.NestedMap(obj.Object, "data")
			if data == nil {
				data = map[string]any{}
			}
			for k, v := range sd {
				data[k] = base64.StdEncoding.EncodeToString([]byte(v))
			}
			obj.Object["data"] = data
			delete(obj.Object, "stringData")
		}
	}
	return json.Marshal(obj.Object)
}

// HideSecretData masks the data values of both sides of a Secret's diff as
// Argo CD does before it shows them: each distinct value of a key becomes
// a run of '+' of its own length, so equal values still look equal and
// different ones different. Other kinds are returned as they are.
func HideSecretData(predicted, live []byte) ([]byte, []byte, error) {
	var p, l map[string]any
	if err := json.Unmarshal(predicted, &p); err != nil {
		return nil, nil, err
	}
	if err := json.Unmarshal(live, &l); err != nil {
		return nil, nil, err
	}
	if p["kind"] != "Secret" {
		return predicted, live, nil
	}
	pd, _ := p["data"].(map[string]any)
	ld, _ := l["data"].(map[string]any)
	keys := map[string]bool{}
	for k := range pd {
		keys[k] = true
	}
	for k := range ld {
		keys[k] = true
	}
	for k := range keys {
		masks := map[string]string{}
		next := "++++++++"
		for _, d := range []map[string]any{pd, ld} {
			v, ok := d[k]
			if !ok {
				continue
			}
			s := fmt.Sprint(v)
			if _, seen := masks[s]; !seen {
				masks[s], next = next, next+"++++"
			}
			d[k] = masks[s]
		}
	}
	pb, err := json.Marshal(p)
	if err != nil {
		return nil, nil, err
	}
	lb, err := json.Marshal(l)
	return pb, lb, err
}

// ChangedPaths lists, as JSON pointers, the leaves where a and b differ
// (a leaf present on one side only counts, and so does each leaf of a map
// present on one side only), sorted.
func ChangedPaths(a, b map[string]any) []string {
	var out []string
	var walk func(prefix string, x, y any)
	walk = func(prefix string, x, y any) {
		xm, xok := x.(map[string]any)
		ym, yok := y.(map[string]any)
		// A map missing on one side differs in each of its leaves.
		if xok && y == nil || yok && x == nil {
			xok, yok = true, true
		}
		if xok && yok {
			keys := map[string]bool{}
			for k := range xm {
				keys[k] = true
			}
			for k := range ym {
				keys[k] = true
			}
			for k := range keys {
				walk(prefix+"/"+escapePointer(k), xm[k], ym[k])
			}
			return
		}
		xb, _ := json.Marshal(x)
		yb, _ := json.Marshal(y)
		if !bytes.Equal(xb, yb) {
			out = append(out, prefix)
		}
	}
	walk("", a, b)
	sort.Strings(out)
	return out
}

// PointerFields splits a JSON pointer into the field names it holds.
func PointerFields(p string) []string {
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, s := range parts {
		parts[i] = strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
	}
	return parts
}

func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// RemovePointers deletes the fields that the JSON pointers name from obj,
// the way Argo CD's ignoreDifferences normalizer does before it compares.
func RemovePointers(obj map[string]any, pointers []string) {
	for _, p := range pointers {
		parts := PointerFields(p)
		m := obj
		for i, part := range parts {
			if i == len(parts)-1 {
				delete(m, part)
				break
			}
			next, ok := m[part].(map[string]any)
			if !ok {
				break
			}
			m = next
		}
	}
}
