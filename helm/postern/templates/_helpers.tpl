{{/* Names. */}}
{{- define "postern.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "postern.fullname" -}}
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

{{- define "postern.selectorLabels" -}}
app.kubernetes.io/name: {{ include "postern.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The bundled Redis: a name of its own, so no selector of the relay's pods matches it. */}}
{{- define "postern.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "postern.name" . }}-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "postern.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "postern.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "postern.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "postern.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "postern.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secret names: the operator's existing Secret, else the one the chart makes. */}}
{{- define "postern.tlsSecret" -}}
{{- default (printf "%s-tls" (include "postern.fullname" .)) .Values.tls.existingSecret }}
{{- end }}
{{- define "postern.postgresSecret" -}}
{{- default (printf "%s-postgres" (include "postern.fullname" .)) .Values.postgres.existingSecret }}
{{- end }}
{{- define "postern.handoffSecret" -}}
{{- default (printf "%s-handoff" (include "postern.fullname" .)) .Values.handoff.existingSecret }}
{{- end }}

{{/* The hand-off Service: ready peers only, so a draining pod (unready) never hands to itself. */}}
{{- define "postern.handoffService" -}}
{{- printf "%s-handoff.%s.svc:%d" (include "postern.fullname" .) .Release.Namespace (int .Values.handoff.containerPort) }}
{{- end }}

{{- define "postern.gracePeriod" -}}
{{- add .Values.drain.deliverSeconds .Values.drain.handoffSeconds 30 }}
{{- end }}

{{- define "postern.privilegedPorts" -}}
{{- $low := false }}
{{- range $role, $l := .Values.listeners }}
{{- if and $l.enabled (lt (int $l.containerPort) 1024) }}{{ $low = true }}{{ end }}
{{- end }}
{{- if or (lt (int .Values.http.containerPort) 1024) (lt (int .Values.handoff.containerPort) 1024) }}{{ $low = true }}{{ end }}
{{- $low }}
{{- end }}

{{/*
postern.toml from a map of tables. Helm reads every YAML number as a float, which toToml
writes as 500.0 (a config error for a count), so the TOML is written here: whole numbers as
integers, strings as JSON strings (valid TOML basic strings), lists inline, maps as tables.
*/}}
{{- define "postern.tomlValue" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) }}
{{- if eq (float64 $v) (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if kindIs "slice" $v }}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "postern.tomlValue" $e }}{{ end }}]
{{- else }}{{ fail (printf "postern.toml: a value of kind %s cannot be written" (kindOf $v)) }}
{{- end }}
{{- end }}

{{- define "postern.tomlTable" -}}
{{- $name := .name }}
{{- $table := .table }}
{{- $nested := list }}
[{{ $name }}]
{{- range $key := keys $table | sortAlpha }}
{{- $v := get $table $key }}
{{- if kindIs "map" $v }}{{ $nested = append $nested $key }}
{{- else if not (kindIs "invalid" $v) }}
{{ $key }} = {{ include "postern.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $key := $nested }}
{{ "" }}
{{ include "postern.tomlTable" (dict "name" (printf "%s.%s" $name $key) "table" (get $table $key)) }}
{{- end }}
{{- end }}

{{/* The config the chart derives, with .Values.config merged over it. */}}
{{- define "postern.config" -}}
{{- $v := .Values }}
{{- $listen := dict "http" (printf "0.0.0.0:%d" (int $v.http.containerPort)) "handoff" (printf "0.0.0.0:%d" (int $v.handoff.containerPort)) "proxy_protocol" $v.proxyProtocol.trustedNetworks }}
{{- range $role, $l := $v.listeners }}
{{- if $l.enabled }}{{ $_ := set $listen $role (printf "0.0.0.0:%d" (int $l.containerPort)) }}{{ end }}
{{- end }}
{{- $quota := dict "backend" "redis" }}
{{- if $v.bundledRedis.enabled }}{{ $_ := set $quota "redis_url" (printf "redis://%s-redis.%s.svc:6379/" (include "postern.fullname" .) .Release.Namespace) }}
{{- else if $v.redis.clusterNodes }}{{ $_ := set $quota "redis_cluster" $v.redis.clusterNodes }}
{{- else }}{{ $_ := set $quota "redis_url" (required "redis.url (or redis.clusterNodes) is required: quotas and brakes are shared by the fleet" $v.redis.url) }}
{{- end }}
{{- if and $v.redis.existingSecret (not $v.bundledRedis.enabled) }}{{ $_ := set $quota "redis_password_file" "/etc/postern/redis/password" }}{{ end }}
{{- $derived := dict
  "server" (dict "hostname" $v.hostname "drain_on_shutdown" true "drain_timeout" (printf "%ds" (int $v.drain.deliverSeconds)))
  "listen" $listen
  "tls" (dict "cert" "/etc/postern/tls/tls.crt" "key" "/etc/postern/tls/tls.key")
  "store" (dict "backend" "postgres" "url" (required "postgres.url is required: the fleet's directory" $v.postgres.url) "password_file" "/etc/postern/postgres/password" "secret_key_file" "/etc/postern/postgres/secret-key" "pool_size" $v.postgres.poolSize "timeout" $v.postgres.timeout "tls" $v.postgres.tls)
  "spool" (dict "path" "/var/lib/postern/spool")
  "quota" $quota
  "handoff" (dict "secret_file" "/etc/postern/handoff/secret" "networks" $v.handoff.networks "peer" (include "postern.handoffService" .))
}}
{{- if $v.postgres.caExistingSecret }}{{ $_ := set (get $derived "store") "ca_file" "/etc/postern/postgres-ca/ca.crt" }}{{ end }}
{{- $config := mergeOverwrite $derived (deepCopy $v.config) }}
{{- range $i, $section := keys $config | sortAlpha }}
{{- if $i }}
{{ "" }}
{{- end }}
{{ include "postern.tomlTable" (dict "name" $section "table" (get $config $section)) }}
{{- end }}
{{- end }}

{{/* The postern.toml file: the config with one blank line between tables. */}}
{{- define "postern.configFile" -}}
# Rendered by the postern Helm chart from its values; `postern config check` validates it.
{{ regexReplaceAll "\n([ \t]*\n)+" (include "postern.config" . | trim) "\n\n" }}
{{- end }}

{{/* redis.conf of the bundled Redis: durable counts (AOF), no eviction of quota keys. */}}
{{- define "postern.redisConf" -}}
port 6379
bind 0.0.0.0 ::
protected-mode no
dir /data
appendonly yes
appendfsync everysec
save 3600 1 300 100
# Quota windows must never be evicted: a full Redis refuses writes (Postern answers 451)
# instead of forgetting counts.
maxmemory {{ .Values.bundledRedis.maxmemory }}
maxmemory-policy noeviction
{{- end }}
