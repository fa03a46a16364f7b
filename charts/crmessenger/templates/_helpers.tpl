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

{{- /* The project's image: repository@digest when a digest is set, else repository:tag. */ -}}
{{- define "crmessenger.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- /* Name of the bundled PostgreSQL's Service, StatefulSet and Secret. */ -}}
{{- define "crmessenger.postgresName" -}}
{{- printf "%s-postgres" (include "crmessenger.fullname" .) -}}
{{- end -}}

{{- define "crmessenger.dsnSecretName" -}}
{{- if .Values.postgres.dsnSecret.name -}}
{{- .Values.postgres.dsnSecret.name -}}
{{- else if .Values.postgres.bundled.enabled -}}
{{- include "crmessenger.postgresName" . -}}
{{- end -}}
{{- end -}}

{{- define "crmessenger.dsnSecretKey" -}}
{{- if .Values.postgres.dsnSecret.name -}}{{ .Values.postgres.dsnSecret.key }}{{- else -}}dsn{{- end -}}
{{- end -}}

{{- define "crmessenger.sessionKeySecretName" -}}
{{- default (printf "%s-session-key" (include "crmessenger.fullname" .)) .Values.sessionKey.secret.name -}}
{{- end -}}
