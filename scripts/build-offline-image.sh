#!/bin/sh
# Builds a runnable wharf image without internet: this machine's node binary and the shared
# libraries it links (ldd), the compiled dist/, bin/, package.json and the production
# node_modules (what package-lock.json does not mark dev-only, copied from ./node_modules),
# plus a static busybox for a shell, as one `docker import`ed layer.
#
#   scripts/build-offline-image.sh [IMAGE]      # default wharf:local; DOCKER_HOST etc. as usual
#
# The image runs like the one the Dockerfile builds: ENTRYPOINT node <flags> /app/bin/wharf.js,
# CMD serve /etc/wharf/config.yml, user 65532, storage /var/lib/registry, ports 5000 and 5001.
# Run it with a read-only root: docker run --read-only --tmpfs /tmp -v DATA:/var/lib/registry ...
# Needs: node, ldd, tar, docker, `npm run build` done (dist/ present). BUSYBOX=/path overrides
# the static busybox (Debian: busybox-static); without one the image has no shell.
set -eu

IMAGE=${1:-wharf:local}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NODE=${NODE:-$(command -v node)}
NODE=$(readlink -f "$NODE")
BUSYBOX=${BUSYBOX:-/bin/busybox}
DOCKER=${DOCKER:-docker}

[ -f "$ROOT/dist/server/main.js" ] || { echo "build-offline-image: dist/ is missing: run npm run build" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wharf-image-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R=$WORK/rootfs
mkdir -p "$R/usr/local/bin" "$R/app" "$R/etc/wharf" "$R/var/lib/registry" "$R/tmp" "$R/bin"
chmod 1777 "$R/tmp"

# node and its libraries, at the paths the dynamic loader looks for them.
cp "$NODE" "$R/usr/local/bin/node"
ldd "$NODE" | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]+/{print $1}' | sort -u | while read -r lib; do
  mkdir -p "$R$(dirname "$lib")"
  cp -L "$lib" "$R$lib"
done
# glibc resolves users and hosts through nsswitch; a minimal setup for a scratch root.
printf 'root:x:0:0:root:/root:/sbin/nologin\nwharf:x:65532:65532:wharf:/var/lib/registry:/sbin/nologin\n' > "$R/etc/passwd"
printf 'root:x:0:\nwharf:x:65532:\n' > "$R/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$R/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$R/etc/hosts"
[ -f /etc/ssl/certs/ca-certificates.crt ] && mkdir -p "$R/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/"

if [ -x "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1; then
  cp "$BUSYBOX" "$R/bin/busybox"
  for a in sh ls cat wget env; do ln -s busybox "$R/bin/$a"; done
fi

# The app: what `npm pack` ships plus the production dependencies.
cp -R "$ROOT/bin" "$ROOT/dist" "$ROOT/package.json" "$R/app/"
cp "$ROOT/scripts/image-config.yml" "$R/etc/wharf/config.yml"
mkdir -p "$R/app/node_modules"
"$NODE" -e '
  const lock = require(process.argv[1]);
  for (const [path, p] of Object.entries(lock.packages ?? {}))
    if (path.startsWith("node_modules/") && !p.dev && !p.link) console.log(path);
' "$ROOT/package-lock.json" | while read -r path; do
  [ -d "$ROOT/$path" ] || continue
  mkdir -p "$R/app/$(dirname "$path")"
  # Nested packages are copied with their parent; copying again is harmless.
  [ -e "$R/app/$path" ] || cp -R "$ROOT/$path" "$R/app/$path"
done
rm -rf "$R/app/node_modules/.bin" "$R/app/node_modules/.package-lock.json"

# Owned by root, except the storage directory (a fresh docker volume takes its owner from it).
if [ "$(id -u)" = 0 ]; then
  chown -R 0:0 "$R"
  chown 65532:65532 "$R/var/lib/registry"
else
  echo "build-offline-image: not root: files keep your owner and /var/lib/registry is not owned by 65532" >&2
fi

tar -C "$R" --numeric-owner -cf "$WORK/rootfs.tar" .
"$DOCKER" import \
  --change 'ENTRYPOINT ["/usr/local/bin/node", "--max-semi-space-size=4", "--expose-gc", "/app/bin/wharf.js"]' \
  --change 'CMD ["serve", "/etc/wharf/config.yml"]' \
  --change 'USER 65532:65532' \
  --change 'WORKDIR /app' \
  --change 'ENV NODE_ENV=production PATH=/usr/local/bin:/bin' \
  --change 'EXPOSE 5000 5001' \
  --change 'VOLUME /var/lib/registry' \
  "$WORK/rootfs.tar" "$IMAGE" >/dev/null
echo "$IMAGE"
