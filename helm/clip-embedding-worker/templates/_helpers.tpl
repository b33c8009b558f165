{{/*
Names and labels (the usual helm create set).
*/}}
{{- define "clip-embedding-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name. StatefulSet pod names append "-<ordinal>" and the controller-revision-hash label
appends "-<hash>" to the StatefulSet name, so it is kept to 52 characters.
*/}}
{{- define "clip-embedding-worker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "clip-embedding-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "clip-embedding-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clip-embedding-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "clip-embedding-worker.labels" -}}
helm.sh/chart: {{ include "clip-embedding-worker.chart" . }}
{{ include "clip-embedding-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "clip-embedding-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "clip-embedding-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "clip-embedding-worker.headlessServiceName" -}}
{{- printf "%s-headless" (include "clip-embedding-worker.fullname" .) }}
{{- end }}

{{- define "clip-embedding-worker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The worker container's name; the KEDA TriggerAuthentication reads env from it. */}}
{{- define "clip-embedding-worker.containerName" -}}
worker
{{- end }}

{{/*
The health/metrics port (config.pipeline.metrics_port). Probes, the container port and the Service
all hang on it, so "unset" (null: no server) is refused.
*/}}
{{- define "clip-embedding-worker.metricsPort" -}}
{{- $port := .Values.config.pipeline.metrics_port }}
{{- if not $port }}
{{- fail "config.pipeline.metrics_port must be set: the probes and the Service need the worker's health server" }}
{{- end }}
{{- int $port }}
{{- end }}

{{/*
terminationGracePeriodSeconds: longer than the worker's own shutdown grace, so the kubelet's SIGKILL
never lands while it is still flushing and committing. Derived unless set; a set value is checked.
*/}}
{{- define "clip-embedding-worker.terminationGracePeriodSeconds" -}}
{{- $grace := float64 (default 25.0 .Values.config.pipeline.shutdown_grace_seconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- $margin := int .Values.terminationGraceMarginSeconds }}
{{- if lt $margin 1 }}
{{- fail "terminationGraceMarginSeconds must be at least 1" }}
{{- end }}
{{- add (int (ceil $grace)) $margin }}
{{- else }}
{{- $tgps := int .Values.terminationGracePeriodSeconds }}
{{- if le (float64 $tgps) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.pipeline.shutdown_grace_seconds (%v)" $tgps $grace) }}
{{- end }}
{{- $tgps }}
{{- end }}
{{- end }}

{{/*
A settings value as the worker reads it from the environment: strings as they are, everything else
(bools, numbers, lists, dicts) as JSON. JSON also keeps large numbers out of Go's "6.4e+07" form.
*/}}
{{- define "clip-embedding-worker.envValue" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
Refuses values the chart owns or that would leak a secret, before anything renders.
*/}}
{{- define "clip-embedding-worker.validate" -}}
{{- $reserved := dict
  "kafka.sasl_password" "never put the SASL password in values: set kafkaAuth.existingSecret"
  "kafka.group_instance_id" "every pod would share it; the chart sets it to the pod name (staticMembership)"
  "model.cache_dir" "the chart sets it from modelCache (the image's /opt/models, or modelCache.mountPath)" }}
{{- range $section, $fields := .Values.config }}
{{- if not (kindIs "map" $fields) }}
{{- fail (printf "config.%s must be a map of settings" $section) }}
{{- end }}
{{- range $key, $value := $fields }}
{{- $why := get $reserved (printf "%s.%s" $section $key) }}
{{- if and $why (not (kindIs "invalid" $value)) }}
{{- fail (printf "config.%s.%s: %s" $section $key $why) }}
{{- end }}
{{- end }}
{{- end }}
{{- /*
The two settings the worker cannot do without. Their defaults are the worker's own (localhost, no
bucket), which in a pod mean no broker and every record dead-lettered: refused here instead.
*/}}
{{- $brokers := toString (default "" .Values.config.kafka.bootstrap_servers) }}
{{- if or (not $brokers) (regexMatch "^(localhost|127\\.0\\.0\\.1)(:|,|$)" $brokers) }}
{{- fail (printf "config.kafka.bootstrap_servers is required: the Kafka brokers as host:port[,host:port] (now %q, which inside a pod is the pod itself), e.g. --set config.kafka.bootstrap_servers=kafka:9092" $brokers) }}
{{- end }}
{{- if not .Values.config.s3.allowed_sources }}
{{- fail "config.s3.allowed_sources is required: the buckets or bucket/prefixes the worker may read (without one every record is dead-lettered as SourceForbidden), e.g. --set-json 'config.s3.allowed_sources=[\"my-bucket/images/\"]'" }}
{{- end }}
{{- $protocol := upper (default "PLAINTEXT" .Values.config.kafka.security_protocol) }}
{{- if and (hasPrefix "SASL" $protocol) (not .Values.kafkaAuth.existingSecret) }}
{{- fail (printf "config.kafka.security_protocol is %s: set kafkaAuth.existingSecret (the Secret with the SASL password)" $protocol) }}
{{- end }}
{{- if and (hasPrefix "SASL" $protocol) (not .Values.config.kafka.sasl_username) (not .Values.kafkaAuth.usernameKey) }}
{{- fail "SASL needs a username: set config.kafka.sasl_username or kafkaAuth.usernameKey" }}
{{- end }}
{{- if and .Values.kafkaAuth.existingSecret (not (hasPrefix "SASL" $protocol)) }}
{{- fail (printf "kafkaAuth.existingSecret is set but config.kafka.security_protocol is %s, not SASL_*" $protocol) }}
{{- end }}
{{- if and .Values.kafkaAuth.caSecret (not (hasSuffix "SSL" $protocol)) }}
{{- fail (printf "kafkaAuth.caSecret is set but config.kafka.security_protocol is %s: a CA is for SSL or SASL_SSL" $protocol) }}
{{- end }}
{{- if and .Values.kafkaAuth.caSecret (hasKey (default dict .Values.config.kafka.client_config) "ssl.ca.location") }}
{{- fail "config.kafka.client_config.ssl.ca.location is set, and so is kafkaAuth.caSecret (which sets it): keep one" }}
{{- end }}
{{- if not (has .Values.modelCache.type (list "image" "emptyDir" "pvc" "existingClaim")) }}
{{- fail (printf "modelCache.type must be image, emptyDir, pvc or existingClaim, not %v" .Values.modelCache.type) }}
{{- end }}
{{- if and .Values.modelCache.fetch.enabled (eq .Values.modelCache.type "image") }}
{{- fail "modelCache.fetch.enabled needs a cache volume: modelCache.type image has the weights in the image already (set type emptyDir, pvc or existingClaim)" }}
{{- end }}
{{- if and .Values.modelCache.readOnly (ne .Values.modelCache.type "existingClaim") }}
{{- fail "modelCache.readOnly is for modelCache.type existingClaim (a claim filled beforehand)" }}
{{- end }}
{{- if and .Values.modelCache.readOnly .Values.modelCache.fetch.enabled }}
{{- fail "modelCache.fetch.enabled cannot write into a read-only claim (modelCache.readOnly)" }}
{{- end }}
{{- if and (eq .Values.modelCache.type "existingClaim") (not .Values.modelCache.existingClaim) }}
{{- fail "modelCache.type is existingClaim: set modelCache.existingClaim" }}
{{- end }}
{{- if and .Values.keda.enabled (lt (int .Values.keda.maxReplicaCount) (int .Values.keda.minReplicaCount)) }}
{{- fail "keda.maxReplicaCount must be >= keda.minReplicaCount" }}
{{- end }}
{{- if and .Values.keda.enabled .Values.keda.limitToPartitionsWithLag .Values.keda.allowIdleConsumers }}
{{- fail "keda.limitToPartitionsWithLag and keda.allowIdleConsumers cannot both be true (KEDA refuses the trigger)" }}
{{- end }}
{{- end }}

{{/*
KEDA's name for the SASL mechanism (its trigger "sasl" parameter).
*/}}
{{- define "clip-embedding-worker.kedaSasl" -}}
{{- $mechanism := upper (default "" .Values.config.kafka.sasl_mechanism) }}
{{- $map := dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512" }}
{{- if not (hasKey $map $mechanism) }}
{{- fail (printf "keda: config.kafka.sasl_mechanism %q (unset: librdkafka's GSSAPI) has no KEDA mapping here; set it to PLAIN or SCRAM-SHA-256/512, or set keda.extraTriggerMetadata.sasl and keda.authenticationRef" $mechanism) }}
{{- end }}
{{- get $map $mechanism }}
{{- end }}

{{/*
The worker's environment, shared by the StatefulSet's container and the `helm test` pod, so the
check runs with exactly the settings the workers get. envFrom: the settings ConfigMap, then the
AWS Secret and extraEnvFrom. env (wins over envFrom, so these cannot be overridden through the
ConfigMap): the chart-owned settings, the cache locations, then extraEnv.
*/}}
{{- define "clip-embedding-worker.envFrom" -}}
- configMapRef:
    name: {{ include "clip-embedding-worker.fullname" . }}
{{- with .Values.aws.existingSecret }}
# S3 credentials for the AWS chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
- secretRef:
    name: {{ . }}
{{- end }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "clip-embedding-worker.env" -}}
{{- $cache := .Values.modelCache }}
{{- if .Values.staticMembership }}
- name: CLIP_WORKER_KAFKA__GROUP_INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- with .Values.kafkaAuth.existingSecret }}
- name: CLIP_WORKER_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.kafkaAuth.passwordKey }}
{{- if $.Values.kafkaAuth.usernameKey }}
- name: CLIP_WORKER_KAFKA__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.kafkaAuth.usernameKey }}
{{- end }}
{{- end }}
{{- if eq $cache.type "image" }}
# The weights are in the image: model.cache_dir is the image's own (/opt/models, read-only at run
# time); the libraries' other caches on the writable /tmp.
- name: HF_HOME
  value: /tmp/huggingface
- name: TORCH_HOME
  value: /tmp/torch
- name: XDG_CACHE_HOME
  value: /tmp/cache
{{- else }}
# Every cache under the model cache volume; HOME for libraries that write ~/.
- name: CLIP_WORKER_MODEL__CACHE_DIR
  value: {{ printf "%s/open_clip" $cache.mountPath | quote }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" $cache.mountPath | quote }}
- name: TORCH_HOME
  value: {{ printf "%s/torch" $cache.mountPath | quote }}
- name: XDG_CACHE_HOME
  value: {{ $cache.mountPath | quote }}
{{- end }}
- name: HOME
  value: /tmp
- name: PYTHONUNBUFFERED
  value: "1"
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The port of each host:port in a comma-separated list, or of a URL (its scheme's default without one).
*/}}
{{- define "clip-embedding-worker.hostPorts" -}}
{{- $ports := list }}
{{- range (splitList "," .) }}
{{- $port := regexFind ":[0-9]+$" (trim .) | trimPrefix ":" }}
{{- $ports = append $ports (default "9092" $port | int) }}
{{- end }}
{{- toJson ($ports | uniq) }}
{{- end }}

{{- define "clip-embedding-worker.urlPort" -}}
{{- $url := urlParse . }}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" }}
{{- default (eq $url.scheme "http" | ternary "80" "443") $port }}
{{- end }}

{{/*
The Kafka CA from kafkaAuth.caSecret: its mount, its volume, and the file ssl.ca.location names.
*/}}
{{- define "clip-embedding-worker.kafkaCaDir" -}}/etc/kafka-ca{{- end }}

{{- define "clip-embedding-worker.kafkaCaFile" -}}
{{ include "clip-embedding-worker.kafkaCaDir" . }}/{{ .Values.kafkaAuth.caKey }}
{{- end }}

{{- define "clip-embedding-worker.kafkaCaMount" -}}
{{- if .Values.kafkaAuth.caSecret }}
- name: kafka-ca
  mountPath: {{ include "clip-embedding-worker.kafkaCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "clip-embedding-worker.kafkaCaVolume" -}}
{{- with .Values.kafkaAuth.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ . }}
    items:
      - key: {{ $.Values.kafkaAuth.caKey }}
        path: {{ $.Values.kafkaAuth.caKey }}
{{- end }}
{{- end }}
