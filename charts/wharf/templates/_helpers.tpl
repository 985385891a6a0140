{{/* Names, labels and the generated config.yml. */}}

{{- define "wharf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wharf.fullname" -}}
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

{{- define "wharf.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wharf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wharf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wharf.labels" -}}
helm.sh/chart: {{ include "wharf.chart" . }}
{{ include "wharf.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "wharf.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wharf.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wharf.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "wharf.pvcName" -}}
{{- default (printf "%s-data" (include "wharf.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* Secret name holding the htpasswd file: the release's own or an existing one. */}}
{{- define "wharf.usersSecret" -}}
{{- default (include "wharf.fullname" .) .Values.auth.usersExistingSecret }}
{{- end }}

{{- define "wharf.needsUsers" -}}
{{- if or .Values.auth.htpasswd.enabled (and .Values.auth.token.enabled .Values.auth.tokenServer.enabled) }}true{{ end }}
{{- end }}

{{/* The token server's signing key from a Secret (auth.tokenServer.signingKey): mounted by subPath into
     wharf.signingKeyDir, a memory emptyDir where wharf writes the key's certificate; that directory is
     auth.tokenserver.keydir. */}}
{{- define "wharf.signingKey" -}}
{{- $ts := .Values.auth.tokenServer }}
{{- if and .Values.auth.token.enabled $ts.enabled (or $ts.signingKey.existingSecret $ts.signingKey.pem) }}true{{ end }}
{{- end }}

{{- define "wharf.signingKeySecret" -}}
{{- default (include "wharf.fullname" .) .Values.auth.tokenServer.signingKey.existingSecret }}
{{- end }}

{{- define "wharf.signingKeyDir" -}}/etc/wharf/token-signer{{- end }}

{{/* The refusals: configurations that cannot work, with what to do instead. */}}
{{- define "wharf.validate" -}}
{{- $v := .Values }}
{{- if and (gt (int $v.replicaCount) 1) (ne $v.storage.type "s3") }}
{{- fail (printf "replicaCount is %d but storage.type is %q: more than one replica needs shared storage. Set storage.type=s3 (with storage.s3.bucket), or replicaCount=1 (filesystem storage on a volume serves one pod)." (int $v.replicaCount) $v.storage.type) }}
{{- end }}
{{- if and (eq $v.storage.type "s3") (not $v.storage.s3.bucket) }}
{{- fail "storage.type is s3 but storage.s3.bucket is empty: set storage.s3.bucket" }}
{{- end }}
{{- if and $v.auth.htpasswd.enabled $v.auth.token.enabled }}
{{- fail "auth: enable one method, auth.htpasswd or auth.token (with or without auth.tokenServer), not both" }}
{{- end }}
{{- if and $v.auth.tokenServer.enabled (not $v.auth.token.enabled) }}
{{- fail "auth.tokenServer.enabled needs auth.token.enabled with its realm, service and issuer (what the token server signs for)" }}
{{- end }}
{{- if $v.auth.token.enabled }}
{{- if not (and $v.auth.token.realm $v.auth.token.service $v.auth.token.issuer) }}
{{- fail "auth.token.enabled needs auth.token.realm (absolute URL where clients get tokens, e.g. https://registry.example.com/auth/token), auth.token.service and auth.token.issuer" }}
{{- end }}
{{- if not (or $v.auth.tokenServer.enabled $v.auth.token.rootCertBundle $v.auth.token.jwks) }}
{{- fail "auth.token.enabled needs the keys that sign tokens: auth.token.rootCertBundle or auth.token.jwks, or auth.tokenServer.enabled to issue them" }}
{{- end }}
{{- end }}
{{- $ts := $v.auth.tokenServer }}
{{- if and $ts.enabled (eq $v.storage.type "s3") (not (or $ts.signingKey.existingSecret $ts.signingKey.pem $ts.keyDir)) }}
{{- fail "auth.tokenServer with storage.type s3 needs a signing key every replica shares (there is no volume to keep one on): make an ECDSA P-256 key (openssl ecparam -name prime256v1 -genkey -noout -out token-signing-key.pem), store it (kubectl create secret generic registry-token-key --from-file=token-signing-key.pem) and set auth.tokenServer.signingKey.existingSecret=registry-token-key, or pass the PEM as auth.tokenServer.signingKey.pem" }}
{{- end }}
{{- if and (or $ts.signingKey.existingSecret $ts.signingKey.pem) $ts.keyDir }}
{{- fail "auth.tokenServer: set signingKey or keyDir, not both (with signingKey the chart mounts the key and sets the key directory)" }}
{{- end }}
{{- if and (include "wharf.needsUsers" .) (not (or $v.auth.users $v.auth.usersExistingSecret)) }}
{{- fail "auth.htpasswd and auth.tokenServer need users: set auth.users (htpasswd -nB lines) or auth.usersExistingSecret (a Secret with an htpasswd key)" }}
{{- end }}
{{- end }}

{{/* config.yml as a dict, rendered with toYaml. */}}
{{- define "wharf.config" -}}
{{- $v := .Values }}
{{- $log := dict "level" $v.log.level }}
{{- if $v.log.accessLogDisabled }}{{ $_ := set $log "accesslog" (dict "disabled" true) }}{{ end }}
{{- if $v.log.fields }}{{ $_ := set $log "fields" $v.log.fields }}{{ end }}
{{- $debug := dict "addr" (printf ":%d" (int $v.containerPorts.debug)) }}
{{- if $v.metrics.enabled }}{{ $_ := set $debug "prometheus" (dict "enabled" true "path" $v.metrics.path) }}{{ end }}
{{- $http := dict "addr" (printf ":%d" (int $v.containerPorts.registry)) "draintimeout" $v.drainTimeout "debug" $debug }}
{{- if $v.httpHeaders }}{{ $_ := set $http "headers" $v.httpHeaders }}{{ end }}
{{- if $v.httpHost }}{{ $_ := set $http "host" $v.httpHost }}{{ end }}
{{- $m := $v.storage.maintenance }}
{{- $storage := dict "delete" (dict "enabled" $v.storage.delete.enabled) "redirect" (dict "disable" $v.storage.redirect.disable) "maintenance" (dict "uploadpurging" (dict "enabled" $m.uploadPurging.enabled "age" $m.uploadPurging.age "interval" $m.uploadPurging.interval "dryrun" $m.uploadPurging.dryRun) "readonly" (dict "enabled" $m.readOnly.enabled)) }}
{{- if eq $v.storage.type "s3" }}
{{- $s := $v.storage.s3 }}
{{- $s3 := dict "region" $s.region "bucket" $s.bucket "encrypt" $s.encrypt "secure" $s.secure "skipverify" $s.skipVerify "v4auth" $s.v4Auth "forcepathstyle" $s.forcePathStyle "storageclass" $s.storageClass }}
{{- if $s.regionEndpoint }}{{ $_ := set $s3 "regionendpoint" $s.regionEndpoint }}{{ end }}
{{- if $s.rootDirectory }}{{ $_ := set $s3 "rootdirectory" $s.rootDirectory }}{{ end }}
{{- if $s.keyId }}{{ $_ := set $s3 "keyid" $s.keyId }}{{ end }}
{{- if $s.chunkSize }}{{ $_ := set $s3 "chunksize" $s.chunkSize }}{{ end }}
{{- $_ := set $storage "s3" $s3 }}
{{- else }}
{{- $_ := set $storage "filesystem" (dict "rootdirectory" $v.storage.filesystem.rootDirectory "fsync" $v.storage.filesystem.fsync) }}
{{- end }}
{{- $config := dict "version" "0.1" "log" $log "http" $http "storage" $storage }}
{{- if $v.health.storageDriver.enabled }}
{{- $_ := set $config "health" (dict "storagedriver" (dict "enabled" true "interval" $v.health.storageDriver.interval "threshold" (int $v.health.storageDriver.threshold))) }}
{{- end }}
{{- if $v.auth.htpasswd.enabled }}
{{- $_ := set $config "auth" (dict "htpasswd" (dict "realm" $v.auth.htpasswd.realm "path" "/etc/wharf/auth/htpasswd")) }}
{{- else if $v.auth.token.enabled }}
{{- $t := $v.auth.token }}
{{- $token := dict "realm" $t.realm "service" $t.service "issuer" $t.issuer }}
{{- if $t.rootCertBundle }}{{ $_ := set $token "rootcertbundle" "/etc/wharf/token/rootcertbundle.pem" }}{{ end }}
{{- if $t.jwks }}{{ $_ := set $token "jwks" "/etc/wharf/token/jwks.json" }}{{ end }}
{{- if $t.signingAlgorithms }}{{ $_ := set $token "signingalgorithms" $t.signingAlgorithms }}{{ end }}
{{- if $t.autoRedirect }}{{ $_ := set $token "autoredirect" true }}{{ end }}
{{- $auth := dict "token" $token }}
{{- if $v.auth.tokenServer.enabled }}
{{- $ts := $v.auth.tokenServer }}
{{- $server := dict "htpasswd" "/etc/wharf/auth/htpasswd" "expiration" $ts.expiration "refreshexpiration" $ts.refreshExpiration }}
{{- if include "wharf.signingKey" $ }}{{ $_ := set $server "keydir" (include "wharf.signingKeyDir" $) }}
{{- else if $ts.keyDir }}{{ $_ := set $server "keydir" $ts.keyDir }}{{ end }}
{{- if $ts.groups }}{{ $_ := set $server "groups" $ts.groups }}{{ end }}
{{- if $ts.rules }}{{ $_ := set $server "rules" $ts.rules }}{{ end }}
{{- $_ := set $auth "tokenserver" $server }}
{{- end }}
{{- $_ := set $config "auth" $auth }}
{{- end }}
{{- if $v.mirror.enabled }}
{{- $mr := $v.mirror }}
{{- $proxy := dict "remoteurl" $mr.remoteUrl }}
{{- if $mr.ttl }}{{ $_ := set $proxy "ttl" $mr.ttl }}{{ end }}
{{- if $mr.maxBandwidth }}{{ $_ := set $proxy "maxbandwidth" $mr.maxBandwidth }}{{ end }}
{{- if $mr.upstreams }}{{ $_ := set $proxy "upstreams" $mr.upstreams }}{{ end }}
{{- if $mr.localNamespaces }}{{ $_ := set $proxy "localnamespaces" $mr.localNamespaces }}{{ end }}
{{- if $mr.prefetch }}{{ $_ := set $proxy "prefetch" true }}{{ end }}
{{- if $mr.cacheSize }}{{ $_ := set $proxy "cachesize" $mr.cacheSize }}{{ end }}
{{- $_ := set $config "proxy" $proxy }}
{{- end }}
{{- $merged := mustMergeOverwrite (deepCopy $config) (deepCopy $v.extraConfig) }}
{{- toYaml $merged }}
{{- end }}

{{/* The value of http.secret: given, kept from the installed release, or new. */}}
{{- define "wharf.httpSecret" -}}
{{- if .Values.httpSecret }}
{{- .Values.httpSecret }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "wharf.fullname" .) }}
{{- if and $existing $existing.data (hasKey $existing.data "httpSecret") }}
{{- index $existing.data "httpSecret" | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{- define "wharf.mirrorSecret" -}}
{{- default (printf "%s-mirror" (include "wharf.fullname" .)) .Values.mirror.existingSecret }}
{{- end }}

{{- define "wharf.s3Secret" -}}
{{- default (printf "%s-s3" (include "wharf.fullname" .)) .Values.storage.s3.credentials.existingSecret }}
{{- end }}
