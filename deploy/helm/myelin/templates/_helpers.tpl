{{/* Release-scoped name prefix. */}}
{{- define "myelin.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The services of the split shape: values key -> -target name. Each gets a
Deployment and a Service named <fullname>-<target>.
*/}}
{{- define "myelin.components" -}}
keyServer: key-server
roomServer: room-server
presence: presence
clientApi: client-api
media: media
federationReceiver: federation-receiver
federationSender: federation-sender
appservice: appservice
edge: edge
{{- end -}}

{{/* dict "root" $ "component" "<target>" -> <fullname>-<target> */}}
{{- define "myelin.componentName" -}}
{{- printf "%s-%s" (include "myelin.fullname" .root) .component -}}
{{- end -}}

{{- define "myelin.selectorLabels" -}}
app.kubernetes.io/name: {{ default .root.Chart.Name .root.Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "myelin.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "myelin.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: myelin
{{- end -}}

{{/* The Secret holding the database URL. */}}
{{- define "myelin.databaseSecret" -}}
{{- if .Values.database.url -}}
{{- printf "%s-database" (include "myelin.fullname" .) -}}
{{- else -}}
{{- required "set database.existingSecret (a Secret holding the PostgreSQL URL) or database.url" .Values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "myelin.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The media service's content volume: the claim to mount, or "" for an emptyDir. */}}
{{- define "myelin.mediaClaim" -}}
{{- $p := .Values.media.storage.file.persistence -}}
{{- if and (eq .Values.media.storage.backend "file") $p.enabled -}}
{{- default (printf "%s-media" (include "myelin.fullname" .)) $p.existingClaim -}}
{{- end -}}
{{- end -}}

{{/*
The gRPC caller matrix: component -> the components that call its gRPC
services. It follows myelin.CallerPolicy (pkg/myelin/callers.go; a test
there checks this list against it) and drives the NetworkPolicies.
*/}}
{{- define "myelin.grpcCallers" -}}
key-server: [room-server, client-api, media, federation-receiver, federation-sender]
room-server: [client-api, presence, federation-receiver, federation-sender, appservice]
presence: [client-api, federation-receiver]
client-api: [media, federation-receiver]
media: [client-api]
federation-sender: [client-api]
federation-receiver: []
appservice: [client-api]
edge: []
{{- end -}}

{{/* The Secret of a component's gRPC certificate. */}}
{{- define "myelin.grpcTLSSecret" -}}
{{- printf "%s-%s" (default (printf "%s-grpc-tls" (include "myelin.fullname" .root)) .root.Values.grpcTLS.secretPrefix) .component -}}
{{- end -}}
