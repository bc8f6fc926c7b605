{{/* The objects' base name: the release name, or <release>-meshroot. */}}
{{- define "meshroot.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Selects the pods: stable across upgrades, unique per release. */}}
{{- define "meshroot.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "meshroot.labels" -}}
{{ include "meshroot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* A mesh's CA Secret: its caSecret, else cacerts (one mesh) or cacerts-<name>. */}}
{{- define "meshroot.caSecret" -}}
{{- $mesh := index . 0 -}}{{- $root := index . 1 -}}
{{- if $mesh.caSecret -}}{{ $mesh.caSecret }}
{{- else if eq (len $root.Values.meshes) 1 -}}cacerts
{{- else -}}cacerts-{{ $mesh.name }}
{{- end -}}
{{- end -}}

{{/* A remote cluster's kubeconfig directory: /etc/meshroot/clusters/<mesh>[-<index>]. */}}
{{- define "meshroot.kubeconfigDir" -}}
{{- $mesh := index . 0 -}}{{- $index := index . 1 -}}
{{- if eq $index 0 -}}/etc/meshroot/clusters/{{ $mesh.name }}
{{- else -}}/etc/meshroot/clusters/{{ $mesh.name }}-{{ $index }}
{{- end -}}
{{- end -}}

{{- define "meshroot.kubeconfigVolume" -}}
{{- $mesh := index . 0 -}}{{- $index := index . 1 -}}
{{- if eq $index 0 -}}kubeconfig-{{ $mesh.name }}
{{- else -}}kubeconfig-{{ $mesh.name }}-{{ $index }}
{{- end -}}
{{- end -}}

{{/* The mesh of the cluster meshroot runs in. */}}
{{- define "meshroot.kubernetesMesh" -}}
{{- $name := .Values.kubernetes.mesh | default (first .Values.meshes).name -}}
{{- range .Values.meshes -}}
{{- if eq .name $name -}}{{ toJson . }}{{- end -}}
{{- end -}}
{{- end -}}

{{- define "meshroot.auditKeySecret" -}}
{{- .Values.audit.keySecret | default (printf "%s-audit-key" (include "meshroot.fullname" .)) -}}
{{- end -}}

{{/*
Each replica's volume: storage.size, or the sizing rule (values.yaml, sizing) in whole GiB:
certificates a day × days kept × bytes per record × 1.5, at least 1 GiB. meshroot's
domain/capacity.rs computes the same (`volume_for`); a test renders both.
*/}}
{{- define "meshroot.storageSize" -}}
{{- if .Values.storage.size -}}
{{- .Values.storage.size -}}
{{- else -}}
{{- $hours := float64 .Values.sizing.certificateLifetimeHours -}}
{{- $perDay := divf (mulf (float64 .Values.sizing.workloads) 86400.0) (mulf $hours 1800.0) -}}
{{- $days := addf (float64 .Values.audit.issuedRetentionDays) (divf $hours 24.0) -}}
{{- $bytes := mulf $perDay $days (float64 .Values.sizing.bytesPerRecord) 1.5 -}}
{{- $gib := int64 (ceil (divf $bytes 1073741824.0)) -}}
{{- max $gib 1 -}}Gi
{{- end -}}
{{- end -}}
