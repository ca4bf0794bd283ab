{{/* Names, labels and the pieces every pod shares. */}}

{{- define "xcpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name; component names append -coordinator, -vision, -decoder. */}}
{{- define "xcpipe.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "xcpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xcpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "xcpipe.labels" -}}
{{ include "xcpipe.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: xcpipe
{{- end -}}

{{- define "xcpipe.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Service and Secret names. */}}
{{- define "xcpipe.coordinator" -}}{{ include "xcpipe.fullname" . }}-coordinator{{- end -}}
{{- define "xcpipe.coordinatorCluster" -}}{{ include "xcpipe.fullname" . }}-coordinator-cluster{{- end -}}
{{- define "xcpipe.vision" -}}{{ include "xcpipe.fullname" . }}-vision{{- end -}}
{{- define "xcpipe.decoder" -}}{{ include "xcpipe.fullname" . }}-decoder{{- end -}}
{{- define "xcpipe.apiSecret" -}}
{{- default (printf "%s-api" (include "xcpipe.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}
{{- define "xcpipe.curveSecret" -}}
{{- default (printf "%s-curve" (include "xcpipe.fullname" .)) .Values.cluster.curve.existingSecret -}}
{{- end -}}
{{- define "xcpipe.apiKeysOn" -}}
{{- if or .Values.auth.apiKeys .Values.auth.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Number of decoder pods: stages x replicas. */}}
{{- define "xcpipe.decoderPods" -}}
{{- mul (int .Values.pipeline.stages) (int .Values.pipeline.replicas) -}}
{{- end -}}

{{/* The coordinator's mailbox as workers reach it (the cluster Service, which also lists the
     coordinator while it is not ready: workers must register before it can be). */}}
{{- define "xcpipe.coordinatorEndpoint" -}}
{{- printf "tcp://%s:%d" (include "xcpipe.coordinatorCluster" .) (int .Values.cluster.coordinatorPort) -}}
{{- end -}}

{{/* Pod-level security context. */}}
{{- define "xcpipe.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security context. */}}
{{- define "xcpipe.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Environment of the coordinator and workers: the pod IP (expanded into endpoints), log level. */}}
{{- define "xcpipe.podEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: XC_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{/* CURVE settings (files from the CURVE Secret) for every cluster process. */}}
{{- define "xcpipe.curveEnv" -}}
{{- if .Values.cluster.curve.enabled -}}
- name: XC_CURVE
  value: "1"
- name: XC_CURVE_SECRET_KEY_FILE
  value: /etc/xcpipe/curve/curve-secret-key
- name: XC_CURVE_SERVER_KEY_FILE
  value: /etc/xcpipe/curve/curve-public-key
- name: XC_CURVE_CLIENT_KEYS_FILE
  value: /etc/xcpipe/curve/curve-public-key
{{- end -}}
{{- end -}}

{{/* Volumes and mounts: model (read-only), CURVE keys, /tmp (the root filesystem is read-only). */}}
{{- define "xcpipe.modelVolume" -}}
- name: model
{{- if .Values.model.volume }}
{{ toYaml .Values.model.volume | indent 2 }}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ .Values.model.claim.name }}
    readOnly: true
{{- end }}
{{- end -}}

{{- define "xcpipe.curveVolume" -}}
{{- if .Values.cluster.curve.enabled -}}
- name: curve
  secret:
    secretName: {{ include "xcpipe.curveSecret" . }}
    defaultMode: 0440
    items:
      - key: curve-secret-key
        path: curve-secret-key
      - key: curve-public-key
        path: curve-public-key
{{- end -}}
{{- end -}}

{{- define "xcpipe.modelMount" -}}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- end -}}

{{- define "xcpipe.curveMount" -}}
{{- if .Values.cluster.curve.enabled -}}
- name: curve
  mountPath: /etc/xcpipe/curve
  readOnly: true
{{- end -}}
{{- end -}}

{{/* Worker env (vision and decoder). Argument: dict "ctx" . "mem" memMiB "role" vision|stage
     (XC_ROLE: the coordinator gives each pod only the role it asks for). */}}
{{- define "xcpipe.workerEnv" -}}
{{- $v := .ctx.Values -}}
{{ include "xcpipe.podEnv" .ctx }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: XC_COORDINATOR
  value: {{ include "xcpipe.coordinatorEndpoint" .ctx | quote }}
- name: XC_ENDPOINT
  value: {{ printf "tcp://$(POD_IP):%d" (int $v.cluster.workerPort) | quote }}
- name: XC_WORKER_ID
  value: "$(POD_NAME)"
- name: XC_BACKEND
  value: {{ $v.worker.backend | quote }}
- name: XC_THREADS
  value: {{ $v.worker.threads | quote }}
- name: XC_HEARTBEAT
  value: {{ $v.worker.heartbeat | quote }}
- name: XC_HANG_TIMEOUT
  value: {{ $v.worker.hangTimeout | quote }}
- name: XC_SEND_TIMEOUT_MS
  value: {{ $v.worker.sendTimeoutMs | quote }}
- name: XC_KV_DTYPE
  value: {{ $v.worker.kvDtype | quote }}
{{- if eq .role "vision" }}
- name: XC_IMAGE_CACHE_MB
  value: {{ $v.vision.imageCacheMiB | quote }}
- name: XC_VISION_BATCH
  value: {{ $v.vision.batch | quote }}
- name: XC_VISION_WAIT_MS
  value: {{ $v.vision.waitMs | quote }}
{{- end }}
- name: XC_MEM_MB
  value: {{ .mem | quote }}
- name: XC_ROLE
  value: {{ .role | quote }}
{{- with include "xcpipe.curveEnv" .ctx }}
{{ . }}
{{- end }}
{{- end -}}

{{/* Worker probes: a worker has no HTTP server; its mailbox port accepting connections means the
     process is up and bound (it registers right after binding). */}}
{{- define "xcpipe.workerProbes" -}}
startupProbe:
  tcpSocket:
    port: cluster
  periodSeconds: 2
  failureThreshold: 30
readinessProbe:
  tcpSocket:
    port: cluster
  periodSeconds: 5
livenessProbe:
  tcpSocket:
    port: cluster
  periodSeconds: 10
  failureThreshold: 3
{{- end -}}

{{/* Container resources plus nvidia.com/gpu (requests = limits for extended resources).
     Argument: dict "res" resources "gpus" count. */}}
{{- define "xcpipe.resources" -}}
{{- $r := deepCopy (default dict .res) -}}
{{- if gt (int .gpus) 0 -}}
{{- $lim := deepCopy (default dict (get $r "limits")) -}}
{{- $_ := set $lim "nvidia.com/gpu" (int .gpus) -}}
{{- $_ := set $r "limits" $lim -}}
{{- end -}}
{{- toYaml $r -}}
{{- end -}}
