{{/* Names and labels. The selector labels never carry the chart version: selectors are immutable. */}}

{{- define "kvscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvscope.fullname" -}}
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

{{- define "kvscope.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "kvscope.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kvscope.labels" -}}
helm.sh/chart: {{ include "kvscope.chart" . }}
{{ include "kvscope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvscope
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kvscope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvscope.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kvscope.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}{{ $repo = printf "%s/%s" .Values.image.registry $repo }}{{ end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True (non-empty) when any web config (TLS, basic auth, headers) is set. */}}
{{- define "kvscope.webConfigured" -}}
{{- if or .Values.web.tls.enabled .Values.web.basicAuth.users .Values.web.headers }}true{{ end }}
{{- end }}

{{/*
uid 0 is needed by the pod-resources socket, the pod logs and the QP probe (see values.yaml):
Kubernetes grants added capabilities such as IPC_LOCK to uid 0 only (no ambient capabilities).
*/}}
{{- define "kvscope.needsRoot" -}}
{{- if or .Values.podResources.enabled .Values.rdma.logFollow.enabled .Values.rdma.probe.enabled }}true{{ end }}
{{- end }}

{{/*
Whether an operator object is rendered: its flag, and its CRD served by the cluster unless
prometheus.forceCRDs. Call with (dict "ctx" $ "enabled" BOOL "api" "group/version/Kind").
*/}}
{{- define "kvscope.crdWanted" -}}
{{- if and .enabled (or .ctx.Values.prometheus.forceCRDs (.ctx.Capabilities.APIVersions.Has .api)) }}true{{ end }}
{{- end }}

{{/* The web config file (exporter-toolkit format) the agent reads with --web.config.file. */}}
{{- define "kvscope.webConfig" -}}
{{- $tls := .Values.web.tls }}
{{- $cfg := dict }}
{{- if $tls.enabled }}
{{- $server := dict "cert_file" "/etc/kvscope/tls/tls.crt" "key_file" "/etc/kvscope/tls/tls.key" "client_auth_type" $tls.clientAuthType "min_version" $tls.minVersion }}
{{- if ne $tls.clientAuthType "NoClientCert" }}
{{- $_ := set $server "client_ca_file" "/etc/kvscope/tls/ca.crt" }}
{{- end }}
{{- $_ := set $cfg "tls_server_config" $server }}
{{- end }}
{{- with .Values.web.basicAuth.users }}
{{- $_ := set $cfg "basic_auth_users" . }}
{{- end }}
{{- with .Values.web.headers }}
{{- $_ := set $cfg "http_server_config" (dict "headers" .) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The agent's configuration file: what the values imply, with .Values.config merged over it. */}}
{{- define "kvscope.agentConfig" -}}
{{- $rdma := dict "probe" .Values.rdma.probe.enabled "log_follow" .Values.rdma.logFollow.enabled }}
{{- if .Values.rdma.logFollow.enabled }}
{{- $_ := set $rdma "log_paths" (list (printf "%s/*/*/*.log" (trimSuffix "/" .Values.rdma.logFollow.hostPath))) }}
{{- end }}
{{- $topology := dict "kubernetes_api" .Values.kubernetesApi.enabled "volcano_hypernodes" .Values.kubernetesApi.volcanoHyperNodes }}
{{- /* The socket is mounted at the agent's default path; without the mount it is absent and the
collector says once that attribution is off. */}}
{{- $collectors := dict "topology" $topology "rdma" $rdma "engines" (dict "discovery" .Values.kubernetesApi.enabled) }}
{{- $base := dict "collectors" $collectors }}
{{- toYaml (mustMergeOverwrite $base (deepCopy .Values.config)) }}
{{- end }}

{{/*
Target labels of the agent's scrape, as kvscope's rules and dashboards expect them (README
"Deploy"): `instance` is the node name, stable across agent restarts (engine series keep their
own with honorLabels); the operator's pod, namespace and container target labels (the agent's
own pod) are dropped, so that series kvscope sets no pod on are not attributed to the agent.
*/}}
{{- define "kvscope.targetRelabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: instance
{{- if not .keepAgentPodLabels }}
- action: labeldrop
  regex: (pod|namespace|container)
{{- end }}
{{- end }}
