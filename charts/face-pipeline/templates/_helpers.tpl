{{/* Name of the FacePipeline: nameOverride or the release name. */}}
{{- define "fp.name" -}}
{{- default .Release.Name .Values.nameOverride -}}
{{- end -}}

{{- define "fp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fp.labels" -}}
helm.sh/chart: {{ include "fp.chart" . }}
app.kubernetes.io/name: face-pipeline
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: face-pipeline
facepipe.io/tenant: {{ .Values.tenantId | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The FacePipeline CRD's CEL rules that JSON Schema cannot express (values.schema.json,
generated from the CRD, covers the rest): fail the render with the CRD's own message.
*/}}
{{- define "fp.validate" -}}
{{- $name := include "fp.name" . -}}
{{- if or (gt (len $name) 50) (not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name)) -}}
{{- fail (printf "FacePipeline name %q (nameOverride, else the release name) must be a DNS-1035 label of at most 50 characters: child Services are named after it" $name) -}}
{{- end -}}
{{- $providers := dict -}}
{{- range $key := list "detector" "embedder" "indexer" -}}
{{- $scaling := (index $.Values.components $key | default dict).autoscaling | default dict -}}
{{- if $scaling.enabled -}}
{{- $_ := set $providers ($scaling.provider | default "hpa") (append (get $providers ($scaling.provider | default "hpa") | default list) $key) -}}
{{- end -}}
{{- end -}}
{{- if and (hasKey $providers "hpa") (hasKey $providers "keda") -}}
{{- fail (printf "spec.components.autoscaling.provider: the workers use both hpa (%s) and keda (%s). The HPAs read their External metric from prometheus-adapter and KEDA serves its own, through the same Kubernetes API (external.metrics.k8s.io), which a cluster gives to one of them: use one provider for every worker" (join ", " $providers.hpa) (join ", " $providers.keda)) -}}
{{- end -}}
{{- range $key := list "detector" "embedder" "indexer" "opsApi" -}}
{{- $component := index $.Values.components $key | default dict -}}
{{- $scaling := $component.autoscaling | default dict -}}
{{- if and $scaling.enabled (gt (int64 $scaling.minReplicas) (int64 $scaling.maxReplicas)) -}}
{{- fail (printf "components.%s: autoscaling.minReplicas must not exceed autoscaling.maxReplicas (%d > %d)" $key (int64 $scaling.minReplicas) (int64 $scaling.maxReplicas)) -}}
{{- end -}}
{{- /* What the operator would refuse later (facepipe.operator.validation), refused now. */ -}}
{{- if and $scaling.enabled (eq $scaling.provider "keda") $.Values.redis.urlSecretRef (not $.Values.redis.kedaAuthenticationRef) -}}
{{- fail (printf "components.%s: autoscaling.provider keda with redis.urlSecretRef needs redis.kedaAuthenticationRef (a TriggerAuthentication giving KEDA the address and password)" $key) -}}
{{- end -}}
{{- if and $scaling.enabled (eq $scaling.provider "keda") $.Values.redis.url (not $.Values.redis.kedaAuthenticationRef) (not (regexMatch "^rediss?://[^@/:]+(:[0-9]+)?(/[0-9]*)?$" $.Values.redis.url)) -}}
{{- fail (printf "components.%s: autoscaling.provider keda needs redis.url as redis[s]://host[:port][/db] without credentials, or redis.kedaAuthenticationRef" $key) -}}
{{- end -}}
{{- if and $scaling.enabled (eq $key "opsApi") (not (($component.resources | default dict).requests | default dict).cpu) -}}
{{- fail "components.opsApi.resources.requests.cpu: required when opsApi autoscaling is enabled (it scales on CPU utilisation of the request)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
