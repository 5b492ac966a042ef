{{/* Names, labels and the RBAC rules every template of the chart shares. */}}

{{/* The chart's name. */}}
{{- define "raftkit-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's objects' name: the release name, with the chart's name
added unless it is already in it. */}}
{{- define "raftkit-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "raftkit-operator.serviceAccountName" -}}
{{- default (include "raftkit-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The labels the Deployment selects its pods by (never change them: a
Deployment's selector is immutable). */}}
{{- define "raftkit-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "raftkit-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The selector labels as key=value,key=value: RAFTKIT_OPERATOR_POD_LABELS,
which the operator admits to every cluster's node port. */}}
{{- define "raftkit-operator.selectorLabelsFlag" -}}
app.kubernetes.io/name={{ include "raftkit-operator.name" . }},app.kubernetes.io/instance={{ .Release.Name }}
{{- end -}}

{{- define "raftkit-operator.labels" -}}
{{ include "raftkit-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: raftkit
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* What the operator does to the objects of the RaftClusters it watches,
and nothing more: it applies with server-side apply (patch), reads through
watches (list, watch), reads and applies the TLS Secrets of clusters with
spec.tls by name (get, patch; never list or watch), applies each cluster's
NetworkPolicy (get, create, patch; never deleted: owner references do it), deletes pods to restart
them and PVCs of removed members, and records Events. deploy/rbac.yaml holds the same rules; the
packaging test checks they agree. */}}
{{- define "raftkit-operator.rules" -}}
- apiGroups: ["raftkit.io"]
  resources: ["raftclusters"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["raftkit.io"]
  resources: ["raftclusters/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "create", "patch", "update"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "update"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
