{{/*
Names. The release name is the base of every object name unless
fullnameOverride is set; names are cut at 63 characters, the longest a DNS
label (and so a Service name) may be.
*/}}
{{- define "gatewright.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gatewright.fullname" -}}
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

{{/* "<fullname>-<suffix>", still within 63 characters. */}}
{{- define "gatewright.suffixed" -}}
{{- $suffix := printf "-%s" .suffix }}
{{- printf "%s%s" (include "gatewright.fullname" .root | trunc (int (sub 63 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{/* The Service Envoys dial for xDS: <xds-service>.<namespace>.svc:<port>. */}}
{{- define "gatewright.xdsServiceName" -}}
{{- include "gatewright.suffixed" (dict "root" . "suffix" "xds") }}
{{- end }}

{{- define "gatewright.metricsServiceName" -}}
{{- include "gatewright.suffixed" (dict "root" . "suffix" "metrics") }}
{{- end }}

{{- define "gatewright.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gatewright.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The controller image; the tag defaults to the chart's appVersion. */}}
{{- define "gatewright.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "gatewright.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "gatewright.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: gatewright
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The labels that select the controller's pods. They never change between
releases: a Deployment's selector is immutable.
*/}}
{{- define "gatewright.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gatewright.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{/*
"true" when the GatewayClass is rendered. Helm resolves the kind of every
object of a release before it creates any, so a GatewayClass cannot be in
the same install as the CRD that defines it: when this chart installs the
CRDs, the GatewayClass is rendered only once the cluster knows the kind
(the second `helm upgrade`, see README.md "First install"). When the CRDs
come from elsewhere they must exist already, and it is always rendered.
*/}}
{{- define "gatewright.renderGatewayClass" -}}
{{- if and .Values.gatewayClass.create (or (not .Values.crds.install) (.Capabilities.APIVersions.Has "gateway.networking.k8s.io/v1/GatewayClass")) -}}
true
{{- end }}
{{- end }}
