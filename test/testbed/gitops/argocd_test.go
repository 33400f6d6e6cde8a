package gitops

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestParseCompareOptions(t *testing.T) {
	tests := []struct {
		in   string
		want CompareOptions
	}{
		{"ServerSideDiff=true,IncludeMutationWebhook=true", CompareOptions{ServerSideDiff: true, IncludeMutationWebhook: true}},
		{"ServerSideDiff=true", CompareOptions{ServerSideDiff: true}},
		{" ServerSideDiff=true , IncludeMutationWebhook=false", CompareOptions{ServerSideDiff: true}},
		{"IgnoreExtraneous", CompareOptions{}},
		{"", CompareOptions{}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) { assert.Equal(t, tt.want, ParseCompareOptions(tt.in)) })
	}
}

func TestHideSecretData(t *testing.T) {
	p := []byte(`{"kind":"Secret","data":{"same":"c2VjcmV0","new":"bmV3","gone":"eA=="}}`)
	l := []byte(`{"kind":"Secret","data":{"same":"c2VjcmV0","new":"b2xk"}}`)
	mp, ml, err := HideSecretData(p, l)
	require.NoError(t, err)
	var pm, lm struct{ Data map[string]any }
	require.NoError(t, json.Unmarshal(mp, &pm))
	require.NoError(t, json.Unmarshal(ml, &lm))
	assert.Equal(t, pm.Data["same"], lm.Data["same"], "equal values get equal masks")
	assert.NotEqual(t, pm.Data["new"], lm.Data["new"], "different values get different masks")
	assert.Equal(t, "++++++++", pm.Data["gone"])
	for _, b := range [][]byte{mp, ml} {
		assert.NotContains(t, string(b), "c2VjcmV0")
		assert.NotContains(t, string(b), "b2xk")
	}

	cm := []byte(`{"data":{"a":"b"},"kind":"ConfigMap"}`)
	a, b, err := HideSecretData(cm, cm)
	require.NoError(t, err)
	assert.Equal(t, cm, a, "a ConfigMap is shown as it is")
	assert.Equal(t, cm, b)
}

func TestArgoNormalized(t *testing.T) {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Secret",
		"metadata": map[string]any{
			"name": "s", "creationTimestamp": "2026-12-02T00:00:00Z",
			"managedFields": []any{map[string]any{"manager": "x"}},
			"annotations":   map[string]any{lastApplied: "{}"},
		},
		"data":       map[string]any{"a": "YQ=="},
		"stringData": map[string]any{"b": "b"},
	}}
	got, err := argoNormalized(obj)
	require.NoError(t, err)
	assert.JSONEq(t, `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"},"data":{"a":"YQ==","b":"Yg=="}}`, string(got))
	assert.Contains(t, obj.Object, "stringData", "the input is not changed")
}

func TestChangedPathsAndRemovePointers(t *testing.T) {
	a := map[string]any{"data": map[string]any{"k": "1"}, "metadata": map[string]any{"annotations": map[string]any{"x/y": "1"}}}
	b := map[string]any{"data": map[string]any{"k": "2", "n": "3"}, "metadata": map[string]any{"annotations": map[string]any{"x/y": "1", "z": "2"}}}
	assert.Equal(t, []string{"/data/k", "/data/n", "/metadata/annotations/z"}, ChangedPaths(a, b))
	assert.Equal(t, []string{"/metadata/annotations/a", "/metadata/annotations/b"},
		ChangedPaths(map[string]any{"metadata": map[string]any{}}, map[string]any{"metadata": map[string]any{"annotations": map[string]any{"a": "1", "b": "2"}}}),
		"a map on one side only: each of its leaves")
	RemovePointers(b, []string{"/data", "/metadata/annotations/z", "/metadata/annotations/x~1y", "/no/such"})
	assert.Equal(t, map[string]any{"metadata": map[string]any{"annotations": map[string]any{}}}, b)
}
