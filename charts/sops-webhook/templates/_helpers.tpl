{{- define "sops-webhook.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sops-webhook.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sops-webhook.labels" -}}
{{ include "sops-webhook.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sops-webhook.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "sops-webhook.tlsSecret" -}}
{{ include "sops-webhook.fullname" . }}-tls
{{- end -}}

{{- /* The namespaces never sent to the webhook: the release's own and the configured ones. */ -}}
{{- define "sops-webhook.excludedNamespaces" -}}
{{- $ns := list .Release.Namespace -}}
{{- range .Values.webhook.excludedNamespaces }}{{ $ns = append $ns . }}{{ end -}}
{{- toJson (uniq $ns | sortAlpha) -}}
{{- end -}}

{{- define "sops-webhook.selfManaged" -}}
{{- if eq .Values.certificates.mode "self-managed" }}true{{ else if eq .Values.certificates.mode "cert-manager" }}{{ else }}{{ fail "certificates.mode must be cert-manager or self-managed" }}{{ end -}}
{{- end -}}

{{- /* The caller-authentication mode as the binary's --caller-auth, or a render failure naming the choice. */ -}}
{{- define "sops-webhook.callerAuth" -}}
{{- $m := .Values.callerAuth.mode -}}
{{- if eq $m "clientCertificate" -}}
client-certificate
{{- else if eq $m "networkPolicy" -}}
{{- if not (and .Values.networkPolicy.enabled .Values.networkPolicy.apiServerSources) -}}
{{- fail "callerAuth.mode=networkPolicy needs networkPolicy.enabled and networkPolicy.apiServerSources: where the API server's calls come from (docs/operations.md, Security model)" -}}
{{- end -}}
network-policy
{{- else if eq $m "none" -}}
none
{{- else -}}
{{- fail "set callerAuth.mode: clientCertificate (the API server presents a client certificate), networkPolicy (only the API server's addresses reach the webhook) or none (any pod can ask for plaintext); docs/operations.md, Security model" -}}
{{- end -}}
{{- end -}}

{{- define "sops-webhook.clientCAConfigMap" -}}
{{- .Values.callerAuth.clientCertificate.existingConfigMap | default (printf "%s-client-ca" (include "sops-webhook.fullname" .)) -}}
{{- end -}}

{{- /* Whether the pods mount a client CA: from a ConfigMap (caBundle, existingConfigMap) or from cert-manager's; without one, self-managed mode issues the API server's certificate. */ -}}
{{- define "sops-webhook.clientCAMounted" -}}
{{- if or .Values.callerAuth.clientCertificate.caBundle .Values.callerAuth.clientCertificate.existingConfigMap (include "sops-webhook.clientCAFromCertManager" .) }}true{{ end -}}
{{- end -}}

{{- /* Whether cert-manager issues the API server's client certificate: client certificates, no CA of the operator's, cert-manager mode. */ -}}
{{- define "sops-webhook.clientCAFromCertManager" -}}
{{- if and (eq .Values.callerAuth.mode "clientCertificate") (not (or .Values.callerAuth.clientCertificate.caBundle .Values.callerAuth.clientCertificate.existingConfigMap)) (not (include "sops-webhook.selfManaged" .)) }}true{{ end -}}
{{- end -}}

{{/* The ConfigMap the self-managed replicas publish their CAs in. */}}
{{- define "sops-webhook.caConfigMap" -}}
{{ include "sops-webhook.fullname" . }}-ca
{{- end -}}

{{/* The Secret holding the keys the webhook generates. */}}
{{- define "sops-webhook.generatedKeysSecret" -}}
{{ include "sops-webhook.fullname" . }}-generated-keys
{{- end }}

{{/* The ConfigMap where the webhook publishes its recipients. */}}
{{- define "sops-webhook.recipientsConfigMap" -}}
{{ include "sops-webhook.fullname" . }}-recipients
{{- end }}

{{/* The ConfigMap where the webhook publishes its keys' backups. */}}
{{- define "sops-webhook.backupsConfigMap" -}}
{{ include "sops-webhook.fullname" . }}-key-backups
{{- end }}
