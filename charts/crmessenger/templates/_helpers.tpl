{{- define "crmessenger.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "crmessenger.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "crmessenger.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "crmessenger.serviceAccountName" -}}
{{- default (include "crmessenger.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "crmessenger.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "crmessenger.dsnSecretName" -}}
{{- if .Values.postgres.dsnSecret.name -}}
{{- .Values.postgres.dsnSecret.name -}}
{{- else if .Values.postgres.bundled.enabled -}}
{{- printf "%s-postgres" (include "crmessenger.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "crmessenger.dsnSecretKey" -}}
{{- if .Values.postgres.dsnSecret.name -}}{{ .Values.postgres.dsnSecret.key }}{{- else -}}dsn{{- end -}}
{{- end -}}

{{- define "crmessenger.sessionKeySecretName" -}}
{{- default (printf "%s-session-key" (include "crmessenger.fullname" .)) .Values.sessionKey.secret.name -}}
{{- end -}}
