{{/*
The chart's name.
*/}}
{{- define "iot-orchestrator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name, truncated to 63 characters (DNS names), the way `helm create` does.
*/}}
{{- define "iot-orchestrator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A part's name: the fullname shortened so that "-<suffix>" fits 52 characters (a StatefulSet's pods carry its name
plus 11 characters in their controller-revision-hash label, which must fit 63). The suffix is kept whole, so parts
never collide. Call with (list . "suffix").
*/}}
{{- define "iot-orchestrator.partName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $base := include "iot-orchestrator.fullname" $root | trunc (int (sub 51 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{- define "iot-orchestrator.mosquitto.fullname" -}}
{{- include "iot-orchestrator.partName" (list . "mosquitto") }}
{{- end }}

{{- define "iot-orchestrator.postgresql.fullname" -}}
{{- include "iot-orchestrator.partName" (list . "postgresql") }}
{{- end }}

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "iot-orchestrator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of a component. Call with (dict "root" . "component" "orchestrator").
*/}}
{{- define "iot-orchestrator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iot-orchestrator.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The recommended labels of a component. Call with (dict "root" . "component" "broker" "version" "2.0").
*/}}
{{- define "iot-orchestrator.labels" -}}
helm.sh/chart: {{ include "iot-orchestrator.chart" .root }}
{{ include "iot-orchestrator.selectorLabels" . }}
app.kubernetes.io/version: {{ regexReplaceAll "[^-A-Za-z0-9_.]" (toString .version) "_" | trunc 63 | trimAll "-_." | quote }}
app.kubernetes.io/part-of: iot-orchestrator
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "iot-orchestrator.orchestratorLabels" -}}
{{ include "iot-orchestrator.labels" (dict "root" . "component" "orchestrator" "version" (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}

{{- define "iot-orchestrator.orchestratorSelectorLabels" -}}
{{ include "iot-orchestrator.selectorLabels" (dict "root" . "component" "orchestrator") }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}; the default tag comes second. Call with (list .Values.image "0.1.0").
*/}}
{{- define "iot-orchestrator.image" -}}
{{- $image := index . 0 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (toString (default (index . 1) $image.tag)) }}
{{- end }}
{{- end }}

{{- define "iot-orchestrator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "iot-orchestrator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret holding the orchestrator's secrets: the one named by existingSecret, or the chart's.
*/}}
{{- define "iot-orchestrator.secretName" -}}
{{- default (include "iot-orchestrator.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "iot-orchestrator.runtimeNamespace" -}}
{{- default .Release.Namespace .Values.runtime.namespace }}
{{- end }}

{{- define "iot-orchestrator.publicUrl" -}}
{{- if .Values.publicUrl }}
{{- .Values.publicUrl }}
{{- else }}
{{- printf "http://%s.%s.svc:%v" (include "iot-orchestrator.fullname" .) .Release.Namespace .Values.service.port }}
{{- end }}
{{- end }}

{{/*
The broker as the orchestrator reaches it, as workers reach it, and the admin account.
*/}}
{{- define "iot-orchestrator.brokerUrl" -}}
{{- if .Values.mosquitto.enabled }}
{{- printf "mqtt://%s.%s.svc:1883" (include "iot-orchestrator.mosquitto.fullname" .) .Release.Namespace }}
{{- else }}
{{- required "externalBroker.url is required when mosquitto.enabled is false" .Values.externalBroker.url }}
{{- end }}
{{- end }}

{{- define "iot-orchestrator.brokerWorkerUrl" -}}
{{- if .Values.mosquitto.enabled }}
{{- include "iot-orchestrator.brokerUrl" . }}
{{- else }}
{{- default (include "iot-orchestrator.brokerUrl" .) .Values.externalBroker.workerUrl }}
{{- end }}
{{- end }}

{{- define "iot-orchestrator.brokerUsername" -}}
{{- if .Values.mosquitto.enabled }}
{{- .Values.mosquitto.auth.username }}
{{- else }}
{{- .Values.externalBroker.username }}
{{- end }}
{{- end }}

{{/*
The template files the ConfigMap holds, as YAML: ConfigMap key -> path under the mounted folder. Built-in files come
from files/templates (logos/x.svg becomes the key logos__x.svg); extraTemplates add or replace top-level files.
*/}}
{{- define "iot-orchestrator.templateFiles" -}}
{{- $files := dict }}
{{- range $path, $_ := .Files.Glob "files/templates/**" }}
{{- $relative := trimPrefix "files/templates/" $path }}
{{- $_ := set $files (replace "/" "__" $relative) $relative }}
{{- end }}
{{- range $name, $_ := .Values.extraTemplates }}
{{- $_ := set $files $name $name }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{/*
Refusals with a message naming the value, for what the schema cannot say.
*/}}
{{- define "iot-orchestrator.validate" -}}
{{- if and .Values.mosquitto.enabled .Values.externalBroker.url }}
{{- fail "externalBroker.url is set but mosquitto.enabled is true: set mosquitto.enabled=false to use an external broker" }}
{{- end }}
{{- if and (not .Values.mosquitto.enabled) (not .Values.externalBroker.url) }}
{{- fail "externalBroker.url is required when mosquitto.enabled is false (mqtt://host:1883 or mqtts://host:8883)" }}
{{- end }}
{{- if and (not .Values.mosquitto.enabled) (not .Values.externalBroker.password) (not .Values.existingSecret) }}
{{- fail "externalBroker.password (or existingSecret) is required when mosquitto.enabled is false" }}
{{- end }}
{{- if and .Values.postgresql.enabled .Values.externalDatabase.url }}
{{- fail "externalDatabase.url is set but postgresql.enabled is true: set postgresql.enabled=false to use an external database" }}
{{- end }}
{{- if and (not .Values.postgresql.enabled) (not .Values.externalDatabase.url) (not .Values.existingSecret) }}
{{- fail "externalDatabase.url (or existingSecret) is required when postgresql.enabled is false" }}
{{- end }}
{{- if and .Values.mosquitto.enabled .Values.mosquitto.tls.enabled (not .Values.mosquitto.tls.secretName) }}
{{- fail "mosquitto.tls.secretName is required when mosquitto.tls.enabled is true (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- end }}

{{/*
The restricted pod and container security contexts. Call with the uid.
*/}}
{{- define "iot-orchestrator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "iot-orchestrator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/*
A volumeClaimTemplate (or nothing). Call with the part's persistence values.
*/}}
{{- define "iot-orchestrator.volumeClaim" -}}
- metadata:
    name: data
  spec:
    accessModes:
      - ReadWriteOnce
    {{- if eq .storageClass "-" }}
    storageClassName: ""
    {{- else if .storageClass }}
    storageClassName: {{ .storageClass | quote }}
    {{- end }}
    resources:
      requests:
        storage: {{ .size | quote }}
{{- end }}
