{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "fpo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart unless the release name already holds the chart name. */}}
{{- define "fpo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "fpo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator pod; never change them after install. */}}
{{- define "fpo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fpo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fpo.labels" -}}
helm.sh/chart: {{ include "fpo.chart" . }}
{{ include "fpo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: face-pipeline
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels for the monitoring objects: ours plus what the Prometheus operator selects on. */}}
{{- define "fpo.monitoringLabels" -}}
{{ include "fpo.labels" . }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "fpo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fpo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fpo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
Whether to render a prometheus-operator object (ServiceMonitor, PodMonitor, PrometheusRule):
enabled, and the cluster serves its API (monitoring.coreos.com/v1/<kind>), so `helm install`
works on a cluster without prometheus-operator (kind, minikube, most fresh clusters).
`helm template` sees no cluster: pass --api-versions monitoring.coreos.com/v1/ServiceMonitor
(and PodMonitor, PrometheusRule), or set monitoring.skipCapabilityCheck.
Call with (dict "root" $ "enabled" <bool> "kind" "ServiceMonitor"); "true" or "".
*/}}
{{- define "fpo.monitoringOn" -}}
{{- $root := .root -}}
{{- if and .enabled (or $root.Values.monitoring.skipCapabilityCheck ($root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" .kind))) -}}
true
{{- end -}}
{{- end -}}

{{/* Where the Grafana dashboard ConfigMaps go. */}}
{{- define "fpo.dashboardNamespace" -}}
{{- default .Release.Namespace .Values.monitoring.dashboards.namespace -}}
{{- end -}}

{{/*
The RBAC rules of the operator inside a namespace it watches: its own resource and the
children it creates from each FacePipeline. Verbs are only those Kopf and the handlers use.
Call with (dict "root" $ "secrets" <bool>): Secrets only in Roles of listed namespaces, never
in the cluster-wide ClusterRole (see rbac.secretNamespaces).
*/}}
{{- define "fpo.namespacedRules" -}}
{{- $root := .root -}}
- apiGroups: ["facepipe.io"]
  resources: ["facepipelines"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["facepipe.io"]
  resources: ["facepipelines/status"]
  verbs: ["get", "patch", "update"]
# The children's ownerReferences set blockOwnerDeletion: where OwnerReferencesPermissionEnforcement
# is on (OpenShift), that needs update on the owner's finalizers.
- apiGroups: ["facepipe.io"]
  resources: ["facepipelines/finalizers"]
  verbs: ["update"]
# Kopf posts an Event per handler outcome.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
# The children of a FacePipeline.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# deletionPolicy Purge waits until the tenant's pods are gone before deleting its data.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
{{- if $root.Values.rbac.keda }}
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}
{{- if and .secrets $root.Values.rbac.readSecrets }}
{{ include "fpo.secretRules" $root }}
{{- end }}
{{- end -}}

{{/* Secrets named by a FacePipeline (Redis URL, S3 keys, Qdrant key): read one by name, never list. */}}
{{- define "fpo.secretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end -}}

{{/*
Target labels every face-pipeline series carries: `tenant` from the pod label facepipe.io/tenant
and `component` from app.kubernetes.io/component. Dashboards, alerts and the adapter rules
select and group on them (the Prometheus operator adds namespace, pod and container itself).
*/}}
{{- define "fpo.tenantRelabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_label_facepipe_io_tenant]
  targetLabel: tenant
  action: replace
- sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_component]
  targetLabel: component
  action: replace
{{- end -}}
