#!/usr/bin/env bash
# Builds the operator, sidecar and init images from this checkout, with the Dockerfiles unchanged,
# over the base images e2e/node/build.sh made (buildah, no registry: --pull=never), and writes each
# as an OCI archive that the test node's containerd imports.
#
#   bash e2e/node/images.sh OUT_DIR [TAG]
#
# Writes OUT_DIR/custody-operator.tar, OUT_DIR/custody-sidecar.tar and OUT_DIR/custody-init.tar,
# images custody.local/custody-{operator,sidecar,init}:TAG (TAG default e2e). buildah's layer
# cache lives in the node cache: a second build with the same package-lock.json reuses the npm ci
# layers, the sidecar reuses the operator's build and deps stages, and the init image its
# apt-get layer.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:?usage: e2e/node/images.sh OUT_DIR [TAG]}"
TAG="${2:-e2e}"
CACHE="${CUSTODY_CACHE_DIR:-$HOME/.cache/custody}/node"
BUILDAH=(buildah --root "$CACHE/buildah" --runroot /run/custody-buildah --storage-driver overlay)
# The overlay driver bind-mounts its directory onto itself and leaves it mounted when buildah
# exits; release it, or the cache cannot be deleted (rm: Device or resource busy).
release_store() { ! mountpoint -q "$CACHE/buildah/overlay" || umount "$CACHE/buildah/overlay" || true; }
trap release_store EXIT

say() { printf 'images: %s\n' "$*"; }
die() {
  printf 'images: error: %s\n' "$*" >&2
  exit 1
}

[[ $(id -u) -eq 0 ]] || die "run as root (buildah stores the images as root)"
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "TAG=$TAG is not an image tag"
for base in gcr.io/distroless/nodejs24-debian12:nonroot docker.io/library/debian:bookworm-slim; do
  "${BUILDAH[@]}" inspect --type image "$base" >/dev/null 2>&1 ||
    die "the base image $base is not built: run bash e2e/node/build.sh first"
done
mkdir -p "$OUT"
cd "$ROOT"

# RUN steps run chrooted (no OCI runtime needed) with the host's network: npm ci reaches the
# npm registry, and Dockerfile.init's apt-get Debian's archive, the way they do outside.
export BUILDAH_ISOLATION=chroot
build_args=(--quiet --pull=never --layers --network host)
# A machine whose way out is a TLS-intercepting proxy trusts its CA through NODE_EXTRA_CA_CERTS;
# npm inside the build stages must trust it too. It is lent to the RUN steps as a read-only
# volume with an npm config naming it, never copied into a layer (what a Docker user does with a
# secret mount).
if [[ -n "${NODE_EXTRA_CA_CERTS:-}" && -f "$NODE_EXTRA_CA_CERTS" ]]; then
  npmrc="$(mktemp)"
  trap 'rm -f "$npmrc"; release_store' EXIT
  printf 'cafile=/run/custody-build/ca.crt\n' >"$npmrc"
  build_args+=(--volume "$NODE_EXTRA_CA_CERTS:/run/custody-build/ca.crt:ro" --volume "$npmrc:/usr/local/etc/npmrc:ro")
  say "the build stages trust $NODE_EXTRA_CA_CERTS (NODE_EXTRA_CA_CERTS) for the npm registry"
fi
for component in operator sidecar init; do
  image="custody.local/custody-$component:$TAG"
  say "building $image from Dockerfile.$component (cold: ~2 min; cached layers: seconds)"
  start=$SECONDS
  "${BUILDAH[@]}" build "${build_args[@]}" -f "Dockerfile.$component" -t "$image" . >/dev/null
  rm -f "$OUT/custody-$component.tar"
  "${BUILDAH[@]}" push --quiet "$image" "oci-archive:$OUT/custody-$component.tar:$image" >/dev/null
  say "built $image in $((SECONDS - start)) s: $OUT/custody-$component.tar"
done
# Layers of earlier builds that no tag names any more (each build of a changed checkout leaves
# its old dist/ layer): without this the cache grows by one image per run.
"${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
