{{/* The chart's name, for the name label. */}}
{{- define "chorus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's name for its objects: the StatefulSet, and so the pod names (`NAME-0`, `NAME-1`,
...) from which every node takes its id. Short enough for a pod name with its ordinal and for the
headless Service name.
*/}}
{{- define "chorus.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "chorus.headlessName" -}}
{{- include "chorus.fullname" . }}-headless
{{- end -}}

{{- define "chorus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chorus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "chorus.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "chorus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "chorus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "chorus.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the app secret and the cluster secret. */}}
{{- define "chorus.secretName" -}}
{{- default (include "chorus.fullname" .) .Values.existingSecret.name -}}
{{- end -}}

{{- define "chorus.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The desired members: every ordinal of the StatefulSet as `id@pod.headless.namespace.svc.domain:port`.
*/}}
{{- define "chorus.peers" -}}
{{- $fullname := include "chorus.fullname" . -}}
{{- $headless := include "chorus.headlessName" . -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $peers = append $peers (printf "%d@%s-%d.%s.%s.svc.%s:%d" $i $fullname $i $headless $.Release.Namespace $.Values.clusterDomain (int $.Values.ports.cluster)) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{/* A TOML value: strings, numbers, booleans and lists of them, as JSON writes them. */}}
{{- define "chorus.tomlValue" -}}
{{- if kindIs "slice" . -}}
[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "chorus.tomlValue" $v }}{{ end }}]
{{- else if kindIs "map" . -}}
{ {{ range $i, $k := keys . | sortAlpha }}{{ if $i }}, {{ end }}{{ toJson $k }} = {{ include "chorus.tomlValue" (get $ $k) }}{{ end }} }
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end -}}

{{/* Checks the values a node could not start with, before anything is applied. */}}
{{- define "chorus.validate" -}}
{{- if lt (int .Values.replicas) 1 -}}
{{- fail "replicas must be at least 1" -}}
{{- end -}}
{{- if not .Values.existingSecret.name -}}
{{- with .Values.clusterSecret -}}
{{- if lt (len .) 16 -}}{{- fail "clusterSecret must be at least 16 characters" -}}{{- end -}}
{{- end -}}
{{- with .Values.app.secret -}}
{{- if lt (len .) 8 -}}{{- fail "app.secret must be at least 8 characters" -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch "^[0-9]+$" (toString .Values.app.id)) -}}
{{- fail "app.id must be numeric (the Python SDK accepts only numeric ids)" -}}
{{- end -}}
{{- $needed := add (int .Values.preStopSleepSeconds) (int .Values.config.shutdown_timeout_secs) (int .Values.leadershipHandoverSeconds) -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must cover preStopSleepSeconds + config.shutdown_timeout_secs + leadershipHandoverSeconds (%d)" (int .Values.terminationGracePeriodSeconds) (int $needed)) -}}
{{- end -}}
{{- end -}}
