{{/*
Names are fixed rather than derived from the release: the operator expects them (see values.yaml).
*/}}

{{- define "custody.labels" -}}
app.kubernetes.io/name: custody
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: custody
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "custody.selectorLabels" -}}
app.kubernetes.io/name: custody
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "custody.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "custody.sidecarImage" -}}
{{ .Values.sidecar.image.repository }}:{{ .Values.sidecar.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "custody.initImage" -}}
{{ .Values.sidecar.capture.image.repository }}:{{ .Values.sidecar.capture.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "custody.issuerUrl" -}}
{{ .Values.tokenService.issuer | default (printf "https://custody-issuer.%s.svc:8443" .Release.Namespace) }}
{{- end }}

{{/*
Native sidecars (init containers with restartPolicy Always) are on by default from Kubernetes 1.29.
*/}}
{{- define "custody.sidecarMode" -}}
{{- if ne .Values.sidecar.mode "auto" -}}
{{ .Values.sidecar.mode }}
{{- else if semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version -}}
native
{{- else -}}
container
{{- end -}}
{{- end }}

{{/*
The webhooks' caBundle (base64 PEM): webhook.caBundle, else the CA certificate from the CA Secret
when the install can read it; empty when neither (helm template), and the operator fills it.
*/}}
{{- define "custody.caBundle" -}}
{{- if .Values.webhook.caBundle -}}
{{ .Values.webhook.caBundle | b64enc }}
{{- else -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace .Values.operator.ca.existingSecret | default dict -}}
{{- $data := get $secret "data" | default dict -}}
{{ get $data .Values.operator.ca.certificateKey | default "" }}
{{- end -}}
{{- end }}
