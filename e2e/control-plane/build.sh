#!/usr/bin/env bash
# Builds a real Kubernetes for tests from source, through the Go module proxy: the control plane
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) and what a node runs of the same
# release (kubelet, kube-proxy). Release downloads are not reachable from the development and CI
# machines; the Go module proxy is. The node's container runtime is e2e/node/build.sh's.
#
#   bash e2e/control-plane/build.sh
#
# Environment:
#   CUSTODY_K8S_VERSION   Kubernetes version (default v1.36.3), a k8s.io/kubernetes module version
#   CUSTODY_ETCD_VERSION  etcd version (default v3.6.17), a go.etcd.io/etcd/server/v3 module version
#   CUSTODY_CACHE_DIR     cache root (default ~/.cache/custody); binaries go to
#                         <root>/control-plane/kubernetes-<ver>/ and <root>/control-plane/etcd-<ver>/
#   GOTOOLCHAIN           when the sources need a newer Go than the installed one, e.g.
#                         GOTOOLCHAIN=go1.27.3 (the module proxy serves Go toolchains)
#
# A run with the binaries already present only checks that they run and reuses them.
# Nothing here is committed: module sources, the build cache and the binaries live in caches.
set -euo pipefail

K8S_VERSION="${CUSTODY_K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${CUSTODY_ETCD_VERSION:-v3.6.17}"
CACHE_ROOT="${CUSTODY_CACHE_DIR:-$HOME/.cache/custody}/control-plane"
K8S_DIR="$CACHE_ROOT/kubernetes-$K8S_VERSION"
ETCD_DIR="$CACHE_ROOT/etcd-$ETCD_VERSION"
SRC_DIR="$CACHE_ROOT/src"

say() { printf 'control-plane: %s\n' "$*"; }
die() {
  printf 'control-plane: error: %s\n' "$*" >&2
  exit 1
}

semver='^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$'
[[ "$K8S_VERSION" =~ $semver && "$K8S_VERSION" == v1.* ]] ||
  die "CUSTODY_K8S_VERSION=$K8S_VERSION is not a Kubernetes version like v1.36.3"
[[ "$ETCD_VERSION" =~ $semver && "$ETCD_VERSION" == v3.* ]] ||
  die "CUSTODY_ETCD_VERSION=$ETCD_VERSION is not an etcd version like v3.6.17"
# k8s.io/kubernetes v1.X.Y is published with its staging modules (k8s.io/api, ...) at v0.X.Y.
STAGING_VERSION="v0.${K8S_VERSION#v1.}"

# "3.6.17" when `etcd --version` says "etcd Version: 3.6.17"; "v1.36.3" for "Kubernetes v1.36.3".
runs_as() {
  local binary="$1" expected="$2" output
  [[ -x "$binary" ]] || return 1
  output="$("$binary" --version 2>&1)" || return 1
  [[ "$output" == *"$expected"* ]]
}

# Every command of k8s.io/kubernetes the tests run, and how long each takes to build cold here.
KUBERNETES_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
declare -A KUBERNETES_ESTIMATES=(
  [kube-apiserver]="~4 min"
  [kube-controller-manager]="~1 min after kube-apiserver, ~3 min alone"
  [kube-scheduler]="~10 s after kube-apiserver"
  [kubelet]="~30 s after kube-apiserver"
  [kube-proxy]="~10 s after kube-apiserver"
)

all_built() {
  local command
  for command in "${KUBERNETES_COMMANDS[@]}"; do
    runs_as "$K8S_DIR/$command" "Kubernetes $K8S_VERSION" || return 1
  done
  runs_as "$ETCD_DIR/etcd" "etcd Version: ${ETCD_VERSION#v}"
}

list_binaries() {
  local command
  for command in "${KUBERNETES_COMMANDS[@]}"; do say "  $K8S_DIR/$command"; done
  say "  $ETCD_DIR/etcd"
}

if all_built; then
  say "reusing ${KUBERNETES_COMMANDS[*]} $K8S_VERSION and etcd $ETCD_VERSION (already built)"
  list_binaries
  exit 0
fi

command -v go >/dev/null 2>&1 ||
  die "go is not installed (or not on PATH). Building the control plane needs Go >= 1.26:
  install it from https://go.dev/dl/ (or your package manager), put its bin/ on PATH, and run
  bash e2e/control-plane/build.sh again."

mkdir -p "$CACHE_ROOT" "$K8S_DIR" "$ETCD_DIR" "$SRC_DIR"

# One build at a time per cache (two test runs may start it together).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE_ROOT/.build.lock"
  flock 9
fi

# One field of a module version's metadata from the module proxy (`go list -m` fetches the .info
# and .mod files only, not the sources): GoMod (the go.mod's path in the module cache), Time.
module_field() {
  local module="$1" version="$2" field="$3"
  (cd "$SRC_DIR" && GOWORK=off go list -m -json "$module@$version") |
    sed -n "s/^[[:space:]]*\"$field\": \"\(.*\)\",\{0,1\}\$/\1/p" | head -n 1
}

# Where the module cache keeps one module version's go.mod.
module_gomod() {
  local file
  file="$(module_field "$1" "$2" GoMod)"
  [[ -n "$file" && -f "$file" ]] ||
    die "could not fetch $1@$2 from the Go module proxy ($(go env GOPROXY)); is the version published?"
  printf '%s\n' "$file"
}

# The `go` line of a go.mod ("1.26.0").
go_directive() { sed -n 's/^go \([0-9.]*\)$/\1/p' "$1" | head -n 1; }

# Fails with advice when the installed Go is older than what a module needs and Go may not fetch
# a newer toolchain by itself (GOTOOLCHAIN=local, the default of this machine's Go).
check_go_version() {
  local module="$1" needed="$2" have toolchain
  have="$(go env GOVERSION)"
  have="${have#go}"
  toolchain="$(go env GOTOOLCHAIN)"
  if [[ "$(printf '%s\n%s\n' "$needed" "$have" | sort -V | head -n 1)" != "$needed" &&
    "$toolchain" == local* ]]; then
    die "$module needs Go >= $needed but go is $have (GOTOOLCHAIN=$toolchain).
  Let go fetch a newer toolchain from the module proxy, e.g.:
    GOTOOLCHAIN=go$needed bash e2e/control-plane/build.sh
  (any go1.X.Y >= $needed the proxy serves works, e.g. GOTOOLCHAIN=go1.27.3)"
  fi
}

# The version stamp's commit: the module proxy does not say which commit a version was cut
# from, so a fixed placeholder; the build date is the version's publication time (stable).
PLACEHOLDER_COMMIT=0000000000000000000000000000000000000000

export CGO_ENABLED=0
cores="$(nproc 2>/dev/null || echo 2)"

# go build into a temporary name, check it runs, then move it into place (never a half binary).
build_binary() {
  local module_dir="$1" package="$2" out="$3" ldflags="$4" expected="$5" estimate="$6" start
  say "building $(basename "$out") $package (cold build takes $estimate on $cores cores)"
  start=$SECONDS
  (cd "$module_dir" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$package")
  runs_as "$out.tmp" "$expected" ||
    die "$out.tmp was built but \`--version\` does not report \"$expected\": $("$out.tmp" --version 2>&1 || true)"
  mv -f "$out.tmp" "$out"
  say "built $(basename "$out") in $((SECONDS - start)) s"
}

# --- etcd -------------------------------------------------------------------------------------
# etcd v3.6's `etcd` binary is the main package at the root of the go.etcd.io/etcd/server/v3
# module (server/main.go). That go.mod replaces its sibling modules with ../ paths, so
# `go install ...@version` refuses it; a wrapper module pins the siblings to the same release.
build_etcd() {
  if runs_as "$ETCD_DIR/etcd" "etcd Version: ${ETCD_VERSION#v}"; then
    say "reusing etcd $ETCD_VERSION (already built)"
    return
  fi
  local gomod dir needed
  say "resolving go.etcd.io/etcd/server/v3@$ETCD_VERSION through $(go env GOPROXY)"
  gomod="$(module_gomod go.etcd.io/etcd/server/v3 "$ETCD_VERSION")"
  needed="$(go_directive "$gomod")"
  check_go_version "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "$needed"
  dir="$SRC_DIR/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  {
    echo "// Generated by e2e/control-plane/build.sh: builds etcd $ETCD_VERSION from the module proxy."
    echo "module custody.local/control-plane/etcd"
    echo
    echo "go $needed"
    echo
    echo "require ("
    for module in server/v3 api/v3 client/pkg/v3 client/v3 pkg/v3; do
      echo "	go.etcd.io/etcd/$module $ETCD_VERSION"
    done
    echo ")"
    echo
    echo "tool go.etcd.io/etcd/server/v3"
  } >"$dir/go.mod"
  say "resolving etcd's dependencies (go mod tidy)"
  (cd "$dir" && go mod tidy)
  local ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${PLACEHOLDER_COMMIT:0:7}"
  build_binary "$dir" go.etcd.io/etcd/server/v3 "$ETCD_DIR/etcd" "$ldflags" \
    "etcd Version: ${ETCD_VERSION#v}" "~1 min"
}

# --- Kubernetes -------------------------------------------------------------------------------
# k8s.io/kubernetes's go.mod requires its staging modules (k8s.io/api, k8s.io/apiserver, ...) at
# v0.0.0 and replaces them with ./staging/src paths, which only work inside its own repository.
# The wrapper module replaces each of them with the matching published release (v0.X.Y).
build_kubernetes() {
  local command needed_commands=()
  for command in "${KUBERNETES_COMMANDS[@]}"; do
    runs_as "$K8S_DIR/$command" "Kubernetes $K8S_VERSION" || needed_commands+=("$command")
  done
  if ((${#needed_commands[@]} == 0)); then
    say "reusing ${KUBERNETES_COMMANDS[*]} $K8S_VERSION (already built)"
    return
  fi
  local gomod dir needed staging
  say "resolving k8s.io/kubernetes@$K8S_VERSION through $(go env GOPROXY)"
  gomod="$(module_gomod k8s.io/kubernetes "$K8S_VERSION")"
  needed="$(go_directive "$gomod")"
  check_go_version "k8s.io/kubernetes@$K8S_VERSION" "$needed"
  # Every k8s.io module the go.mod maps to ./staging/src/... .
  staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._/-]*\) => \./staging/src/.*$#\1#p' "$gomod" | sort -u)"
  [[ -n "$staging" ]] || die "found no staging replacements in k8s.io/kubernetes@$K8S_VERSION's go.mod"
  dir="$SRC_DIR/kubernetes-$K8S_VERSION"
  mkdir -p "$dir"
  {
    echo "// Generated by e2e/control-plane/build.sh: builds Kubernetes $K8S_VERSION from the module proxy."
    echo "module custody.local/control-plane/kubernetes"
    echo
    echo "go $needed"
    echo
    # Kubernetes's own GODEBUG defaults (e.g. "godebug default=go1.26"): a main module's
    # godebug lines decide the binary's defaults, and ours is the main module here.
    sed -n '/^godebug /p' "$gomod"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    local module
    for module in $staging; do
      # A staging module that is in the list but never published (k8s.io/sample-cli-plugin)
      # is not needed by these commands; replacing it anyway costs nothing, Go only fetches
      # replacements of modules in the build graph.
      echo "	$module => $module $STAGING_VERSION"
    done
    echo ")"
    echo
    echo "tool ("
    for command in "${KUBERNETES_COMMANDS[@]}"; do
      echo "	k8s.io/kubernetes/cmd/$command"
    done
    echo ")"
  } >"$dir/go.mod"
  say "resolving Kubernetes's dependencies (go mod tidy; the first run downloads ~1 GB of modules)"
  (cd "$dir" && go mod tidy)

  local minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  local commit date ldflags package
  commit="$PLACEHOLDER_COMMIT"
  date="$(module_field k8s.io/kubernetes "$K8S_VERSION" Time)"
  ldflags="-s -w"
  # What hack/lib/version.sh stamps, for both version packages: /version and --version report it.
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $package.gitVersion=$K8S_VERSION"
    ldflags+=" -X $package.gitMajor=1"
    ldflags+=" -X $package.gitMinor=$minor"
    ldflags+=" -X $package.gitCommit=$commit"
    ldflags+=" -X $package.gitTreeState=clean"
    ldflags+=" -X $package.buildDate=${date:-1970-01-01T00:00:00Z}"
  done
  for command in "${needed_commands[@]}"; do
    build_binary "$dir" "k8s.io/kubernetes/cmd/$command" "$K8S_DIR/$command" \
      "$ldflags" "Kubernetes $K8S_VERSION" "${KUBERNETES_ESTIMATES[$command]}"
  done
}

say "building the control plane: Kubernetes $K8S_VERSION (staging modules $STAGING_VERSION), etcd $ETCD_VERSION, with $(go version)"
say "cache: $CACHE_ROOT"
total=$SECONDS
build_etcd
build_kubernetes
say "done in $((SECONDS - total)) s:"
list_binaries
