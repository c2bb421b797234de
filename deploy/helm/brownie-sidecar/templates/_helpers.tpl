{{/* Common labels of every object. */}}
{{- define "brownie.labels" -}}
app.kubernetes.io/part-of: brownie
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if eq .Release.Service "Helm" }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end }}
{{- end -}}

{{- define "brownie.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* Host names of a shard ("shard" is the index). */}}
{{- define "brownie.primaryHost" -}}
brownie-shard-{{ .shard }}-primary.{{ .root.Values.namespaces.database }}.svc
{{- end -}}
{{- define "brownie.replicaHost" -}}
brownie-shard-{{ .shard }}-replica-{{ .replica }}.brownie-shard-{{ .shard }}-replica.{{ .root.Values.namespaces.database }}.svc
{{- end -}}

{{/* libpq connection options with a client certificate mounted at .dir. */}}
{{- define "brownie.certConn" -}}
port=5432 sslmode=verify-full sslrootcert={{ .dir }}/ca.crt sslcert={{ .dir }}/tls.crt sslkey={{ .dir }}/tls.key
{{- end -}}

{{/* Restricted pod security for the Postgres pods (the image's postgres user). */}}
{{- define "brownie.postgresPodSecurity" -}}
runAsNonRoot: true
runAsUser: 999
runAsGroup: 999
fsGroup: 999
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "brownie.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
