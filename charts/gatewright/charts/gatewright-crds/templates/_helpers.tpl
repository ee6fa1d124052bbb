{{/*
The Gateway API bundle this chart ships: the folder of the repository's
crds/ (reached through files/crds) it renders. One Gateway API version per
Gatewright version, so it is a constant, not a value.
*/}}
{{- define "gatewright-crds.bundle" -}}
files/crds/gateway-api-v1.7.0
{{- end }}

{{/*
Renders one YAML file of CRDs (or other cluster objects) given as
(dict "root" $ "path" PATH): each document is parsed, gets the chart's
labels and, if it is a CRD and keep is on, the annotation that makes Helm
leave it in place on uninstall, and is written back. Parsing (rather than pasting the
file) is what lets the annotation be added without editing the upstream
files; charts/check.sh verifies that the round trip changes nothing else.
*/}}
{{- define "gatewright-crds.render" -}}
{{- $root := .root -}}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" ($root.Files.Get .path) -1 -}}
{{- $obj := fromYaml $doc -}}
{{- if hasKey $obj "Error" -}}
{{- fail (printf "cannot parse %s: %s" $.path $obj.Error) -}}
{{- end -}}
{{- if $obj }}
{{- $meta := $obj.metadata | default dict -}}
{{- $annotations := $meta.annotations | default dict -}}
{{- if and $root.Values.keep (eq ($obj.kind | toString) "CustomResourceDefinition") -}}
{{- $_ := set $annotations "helm.sh/resource-policy" "keep" -}}
{{- end -}}
{{- if $annotations -}}
{{- $_ := set $meta "annotations" $annotations -}}
{{- end -}}
{{- $labels := $meta.labels | default dict -}}
{{- $_ := set $labels "app.kubernetes.io/name" "gatewright" -}}
{{- $_ := set $labels "app.kubernetes.io/component" "crds" -}}
{{- $_ := set $labels "app.kubernetes.io/part-of" "gatewright" -}}
{{- $_ := set $labels "app.kubernetes.io/managed-by" $root.Release.Service -}}
{{- $_ := set $labels "helm.sh/chart" (printf "gatewright-crds-%s" $root.Chart.Version) -}}
{{- $_ := set $meta "labels" $labels -}}
{{- $_ := set $obj "metadata" $meta }}
---
# Source: {{ $.path | trimPrefix "files/" }}
{{ toYaml $obj }}
{{- end }}
{{- end }}
{{- end }}
