{{/* The chart name, or nameOverride. */}}
{{- define "fedns.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The base of every resource name: fullnameOverride, else the release name when it
already contains the chart name (release "fedns" -> "fedns", never "fedns-fedns"),
else "<release>-<chart>".
*/}}
{{- define "fedns.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "fedns.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "fedns.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedns.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedns.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fedns.labels" -}}
helm.sh/chart: {{ include "fedns.chart" . }}
{{ include "fedns.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "fedns.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fedns.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fedns.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* "true" when a cluster is watched through this pod's own service account. */}}
{{- define "fedns.inCluster" -}}
{{- $in := false -}}
{{- if .Values.federation.zone -}}
{{- range .Values.federation.clusters -}}
{{- if .in_cluster -}}{{- $in = true -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if $in -}}true{{- end -}}
{{- end -}}

{{/* The export mode the rendered config (server) or the remote fedns (member) uses. */}}
{{- define "fedns.exportMode" -}}
{{- (.Values.federation.export | default dict).mode | default "all" -}}
{{- end -}}

{{/*
Where things are in the pod. The config and the zone files are one ConfigMap
volume; the kubeconfigs are one read-only projected volume of Secrets beside it
(never inside it), so the config names them as ../kubeconfigs/<cluster>.kubeconfig
and the same relative layout works anywhere (the chart's test checks it so).
*/}}
{{- define "fedns.configDir" -}}/etc/fedns/config{{- end -}}
{{- define "fedns.kubeconfigDir" -}}/etc/fedns/kubeconfigs{{- end -}}
{{- define "fedns.adminDir" -}}/etc/fedns/admin{{- end -}}
{{- define "fedns.stateDir" -}}/var/lib/fedns{{- end -}}
{{- define "fedns.tokenSecret" -}}
{{- .Values.admin.token.existingSecret | default (printf "%s-admin-token" (include "fedns.fullname" .)) -}}
{{- end -}}

{{/* The zone files: ConfigMap key -> master file text. */}}
{{- define "fedns.zoneFiles" -}}
{{- $out := dict -}}
{{- range $i, $z := .Values.zones -}}
{{- $text := $z.content -}}
{{- if not $text -}}
{{- $text = $.Files.Get (printf "files/%s" $z.file) -}}
{{- end -}}
{{- if not $text -}}
{{- fail (printf "zones[%d] (%s): no content, and the chart has no files/%s; give zones[%d].content" $i $z.origin $z.file $i) -}}
{{- end -}}
{{- $_ := set $out $z.file $text -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The fedns config file, from values (resolver/config.py reads it). */}}
{{- define "fedns.config" -}}
{{- $v := .Values -}}
{{- $dns := deepCopy ($v.dns | default dict) -}}
{{- /* IPv6-first clusters reach the pod at its IPv6 address. */ -}}
{{- $any := "0.0.0.0" -}}
{{- if and $v.service.ipFamilies (eq (first $v.service.ipFamilies) "IPv6") -}}{{- $any = "[::]" -}}{{- end -}}
{{- $_ := set $dns "listen" (printf "%s:5353" $any) -}}
{{- $_ := set $dns "workers" $v.workers -}}
{{- $admin := dict "listen" (printf "%s:%d" $any (int $v.admin.port)) "auth" $v.admin.auth -}}
{{- /* Relative, as every path here: config dir /etc/fedns/config. */ -}}
{{- $_ := set $admin "token_file" "../admin/token" -}}
{{- $cfg := dict "dns" $dns "admin" $admin -}}
{{- $_ := set $cfg "state_dir" "../../../var/lib/fedns" -}}
{{- $_ := set $cfg "history_size" (int $v.history.size) -}}
{{- if $v.tcp -}}{{- $_ := set $cfg "tcp" $v.tcp -}}{{- end -}}
{{- if $v.server -}}{{- $_ := set $cfg "server" $v.server -}}{{- end -}}
{{- $_ := set $cfg "log" (dict "level" $v.logLevel) -}}
{{- $zones := list -}}
{{- range $v.zones -}}
{{- $zones = append $zones (dict "origin" .origin "file" .file) -}}
{{- end -}}
{{- $_ := set $cfg "zones" $zones -}}
{{- $f := $v.federation -}}
{{- if $f.zone -}}
{{- $clusters := list -}}
{{- range $f.clusters -}}
{{- $c := omit . "kubeconfigSecret" -}}
{{- if .kubeconfigSecret -}}
{{- $_ := set $c "kubeconfig" (printf "../kubeconfigs/%s.kubeconfig" .name) -}}
{{- end -}}
{{- $clusters = append $clusters $c -}}
{{- end -}}
{{- $export := deepCopy ($f.export | default dict) -}}
{{- if $v.rbac.namespaces -}}
{{- $ns := deepCopy ($export.namespaces | default dict) -}}
{{- if not $ns.allow -}}{{- $_ := set $ns "allow" $v.rbac.namespaces -}}{{- end -}}
{{- range $n := $ns.allow -}}
{{- if and (not (has $n ($ns.deny | default list))) (not (has $n $v.rbac.namespaces)) -}}
{{- fail (printf "federation.export.namespaces.allow: %s is not in rbac.namespaces, whose Roles would not let fedns watch it; add it there" $n) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $export "namespaces" $ns -}}
{{- end -}}
{{- $fed := dict "zone" $f.zone "clusters" $clusters "export" $export -}}
{{- range $key := list "localities" "regions" "defaults" "policies" "health" "probes" "services" -}}
{{- if index $f $key -}}{{- $_ := set $fed $key (index $f $key) -}}{{- end -}}
{{- end -}}
{{- $_ := set $cfg "federation" $fed -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The read-only rules, for a ClusterRole or a Role. */}}
{{- define "fedns.rules" -}}
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
{{- if eq (include "fedns.exportMode" .) "serviceexport" }}
- apiGroups: [multicluster.x-k8s.io]
  resources: [serviceexports]
  verbs: [get, list, watch]
{{- end }}
{{- end -}}
