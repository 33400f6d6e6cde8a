{{- /*
sops-webhook values helper, version 0.1.0.

Renders the sops-webhook.io/values annotation for a Secret or ConfigMap whose
templates use values from a SOPS-encrypted values file
(helm install -f secrets.enc.yaml). Without a decryption key anywhere but in
the cluster, the sops-webhook admission webhook replaces every
ENC[AES256_GCM,...] token in the object with its plain text.

Use it under metadata.annotations:

  metadata:
    annotations:
      {{- include "sops-webhook.values" . | nindent 4 }}

It walks .Values (skipping .Values.sops), finds every string that is a SOPS
token, and renders, as one JSON annotation, the file's SOPS metadata
(.Values.sops) and each token's values path, keyed by the token's GCM tag:

  sops-webhook.io/values: '{"paths":{"<tag>":"db:password:"},"sops":{...}}'

The path is the one sops authenticated the token with: map keys joined by ":"
with a trailing ":"; list items keep their list's path. It renders nothing when
.Values holds no token. The annotation is removed by the webhook before the
object is stored.

Use the library chart (charts/sops-webhook-values) as a dependency, or copy
this file into your chart's templates/ directory; both are the same file.
*/ -}}
{{- define "sops-webhook.values" -}}
{{- $paths := dict -}}
{{- range $key, $value := .Values -}}
{{- if ne $key "sops" -}}
{{- include "sops-webhook.values.walk" (dict "value" $value "path" (printf "%s:" $key) "paths" $paths) -}}
{{- end -}}
{{- end -}}
{{- if $paths -}}
sops-webhook.io/values: {{ dict "sops" .Values.sops "paths" $paths | toJson | quote }}
{{- end -}}
{{- end -}}

{{- /* sops-webhook.values.walk records the tokens under one value. */ -}}
{{- define "sops-webhook.values.walk" -}}
{{- $value := .value -}}
{{- if kindIs "map" $value -}}
{{- range $key, $child := $value -}}
{{- include "sops-webhook.values.walk" (dict "value" $child "path" (printf "%s%s:" $.path $key) "paths" $.paths) -}}
{{- end -}}
{{- else if kindIs "slice" $value -}}
{{- range $child := $value -}}
{{- include "sops-webhook.values.walk" (dict "value" $child "path" $.path "paths" $.paths) -}}
{{- end -}}
{{- else if and (kindIs "string" $value) (hasPrefix "ENC[AES256_GCM,data:" $value) -}}
{{- $tag := regexFind "tag:[A-Za-z0-9+/=]+" $value | trimPrefix "tag:" -}}
{{- if $tag -}}
{{- $_ := set $.paths $tag $.path -}}
{{- end -}}
{{- end -}}
{{- end -}}
