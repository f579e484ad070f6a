#!/usr/bin/env bash
# Custody end to end on a real Kubernetes: a throw-away kind cluster, the operator and sidecar
# images built from this checkout, the Helm chart, the shop → cart → payments example with injected
# sidecars, and the demo's scenarios played against it. See e2e/kind/README.md.
#
#   e2e/kind/run.sh            (or: make e2e-kind)
#
# Environment:
#   KEEP_CLUSTER=1       leave the cluster (and the work directory with its kubeconfig) for debugging
#   SKIP_BUILD=1         reuse custody-operator:$IMAGE_TAG and custody-sidecar:$IMAGE_TAG as they are
#   CLUSTER_NAME         kind cluster name (default custody-e2e); it must not exist yet
#   IMAGE_TAG            tag of the two images (default e2e)
#   KIND_NODE_IMAGE      kindest/node image (default: kind's own for its version)
#   HELM_EXTRA_ARGS      more arguments for `helm install` (word-split), e.g. "--set operator.logLevel=debug"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

CLUSTER="${CLUSTER_NAME:-custody-e2e}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"
TAG="${IMAGE_TAG:-e2e}"
OPERATOR_IMAGE="custody-operator:${TAG}"
SIDECAR_IMAGE="custody-sidecar:${TAG}"
# The apps of examples/shop need nothing but node; the same image the build stage starts from.
APP_IMAGE="node:24-bookworm-slim"
SYSTEM_NS="custody-system"
SHOP_NS="shop"
CHART="charts/custody"
MIN_KIND="0.24"
MIN_NODE="20.19"

STARTED=$SECONDS
CLUSTER_CREATED=0
WORK="$(mktemp -d "${TMPDIR:-/tmp}/custody-kind.XXXXXX")"
# A kubeconfig of our own: the user's ~/.kube/config and current context are never touched.
export KUBECONFIG="$WORK/kubeconfig"
export DOCKER_BUILDKIT=1

step() { printf '\n==> [%3ds] %s\n' "$((SECONDS - STARTED))" "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
  printf '\nerror: %s\n' "$*" >&2
  exit 1
}

# "1.2.3" >= "1.2"? (numeric, field by field)
version_at_least() {
  local have="$1" want="$2"
  [[ "$(printf '%s\n%s\n' "$want" "$have" | sort -t. -k1,1n -k2,2n -k3,3n | head -n1)" == "$want" ]]
}

diagnostics() {
  printf '\n---- diagnostics (cluster %s) ----\n' "$CLUSTER" >&2
  {
    kubectl get nodes -o wide || true
    kubectl get pods -A -o wide || true
    kubectl -n "$SYSTEM_NS" get deploy,svc,secrets,configmaps || true
    kubectl get mutatingwebhookconfigurations,validatingwebhookconfigurations || true
    kubectl -n "$SHOP_NS" get serviceidentities,accesspolicies,deploy,rs,svc,configmaps -o wide || true
    kubectl -n "$SHOP_NS" get events --sort-by=.lastTimestamp || true
    kubectl -n "$SYSTEM_NS" get events --sort-by=.lastTimestamp || true
    for pod in $(kubectl -n "$SYSTEM_NS" get pods -o name 2>/dev/null); do
      printf '\n---- logs %s/%s ----\n' "$SYSTEM_NS" "$pod"
      kubectl -n "$SYSTEM_NS" logs "$pod" --all-containers --prefix --tail=200 || true
    done
    for pod in $(kubectl -n "$SHOP_NS" get pods -o name 2>/dev/null); do
      printf '\n---- logs %s/%s ----\n' "$SHOP_NS" "$pod"
      kubectl -n "$SHOP_NS" logs "$pod" --all-containers --prefix --tail=100 || true
    done
  } >&2 2>&1
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if ((CLUSTER_CREATED)); then
    ((status == 0)) || diagnostics
    if [[ "$KEEP_CLUSTER" == "1" ]]; then
      step "keeping cluster $CLUSTER (KEEP_CLUSTER=1)"
      info "export KUBECONFIG=$KUBECONFIG"
      info "kubectl -n $SHOP_NS get pods; kubectl -n $SYSTEM_NS logs deploy/<operator deployment>"
      info "the CA and the identity provider's key are in $WORK"
      info "when done: kind delete cluster --name $CLUSTER && rm -rf $WORK"
    else
      step "deleting cluster $CLUSTER"
      kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" || true
    fi
  fi
  if [[ "$KEEP_CLUSTER" != "1" || $CLUSTER_CREATED -eq 0 ]]; then
    rm -rf "$WORK"
  fi
  if ((status == 0)); then
    step "PASS: Custody on kind, in $((SECONDS - STARTED)) s"
  else
    printf '\n==> [%3ds] FAIL (exit %d)\n' "$((SECONDS - STARTED))" "$status" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- what it needs --------------------------------------------------------------------------------

step "checking tools"
missing=()
command -v docker >/dev/null 2>&1 || missing+=("docker (Docker Engine or Docker Desktop: https://docs.docker.com/engine/install/)")
command -v kind >/dev/null 2>&1 || missing+=("kind >= $MIN_KIND (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)")
command -v kubectl >/dev/null 2>&1 || missing+=("kubectl (https://kubernetes.io/docs/tasks/tools/)")
command -v helm >/dev/null 2>&1 || missing+=("helm 3 or 4 (https://helm.sh/docs/intro/install/)")
command -v node >/dev/null 2>&1 || missing+=("node >= $MIN_NODE (https://nodejs.org/)")
if ((${#missing[@]} > 0)); then
  printf 'error: this suite needs tools that are not installed:\n' >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi
docker info >/dev/null 2>&1 ||
  die "docker is installed but no Docker engine answers (is the daemon running, may this user use it?)."
kind_version="$(kind version | sed -nE 's/^kind v?([0-9]+\.[0-9]+(\.[0-9]+)?).*/\1/p')"
version_at_least "${kind_version:-0}" "$MIN_KIND" ||
  die "kind ${kind_version:-of unknown version} is too old: this suite needs kind >= $MIN_KIND."
helm_version="$(helm version --template '{{.Version}}' 2>/dev/null || true)"
[[ "$helm_version" =~ ^v[34]\. ]] || die "helm 3 or 4 is needed (found '${helm_version:-none}')."
node_version="$(node --version | sed 's/^v//')"
version_at_least "$node_version" "$MIN_NODE" || die "node $node_version is too old: >= $MIN_NODE is needed."
[[ -f dist/cli/src/main.js ]] || die "the CLI is not built: run \`make build\` first (make e2e-kind does)."
[[ -d node_modules/tsx ]] || die "dev dependencies are missing (tsx): run \`make install\` first."
[[ -f "$CHART/Chart.yaml" ]] || die "no Helm chart at $CHART."
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  die "a kind cluster named $CLUSTER already exists: delete it (kind delete cluster --name $CLUSTER) or set CLUSTER_NAME."
fi
info "docker $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'), kind $kind_version, $(kubectl version --client -o yaml 2>/dev/null | sed -nE 's/^ *gitVersion: (.*)/kubectl \1/p' | head -n1), helm $helm_version, node $node_version"
info "work directory: $WORK"

# --- images ---------------------------------------------------------------------------------------

if [[ "$SKIP_BUILD" == "1" ]]; then
  step "using existing images $OPERATOR_IMAGE and $SIDECAR_IMAGE (SKIP_BUILD=1)"
  docker image inspect "$OPERATOR_IMAGE" "$SIDECAR_IMAGE" >/dev/null
else
  step "building $OPERATOR_IMAGE (Dockerfile.operator)"
  docker build -f Dockerfile.operator -t "$OPERATOR_IMAGE" .
  step "building $SIDECAR_IMAGE (Dockerfile.sidecar)"
  docker build -f Dockerfile.sidecar -t "$SIDECAR_IMAGE" .
fi
docker image inspect "$APP_IMAGE" >/dev/null 2>&1 || docker pull "$APP_IMAGE"

# --- cluster --------------------------------------------------------------------------------------

step "creating kind cluster $CLUSTER"
kind_args=(--name "$CLUSTER" --config e2e/kind/kind-config.yaml --kubeconfig "$KUBECONFIG" --wait 180s)
[[ -z "${KIND_NODE_IMAGE:-}" ]] || kind_args+=(--image "$KIND_NODE_IMAGE")
CLUSTER_CREATED=1
kind create cluster "${kind_args[@]}"

step "loading images into the cluster"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$SIDECAR_IMAGE"
# Best effort: the node can pull the public app image itself if loading it fails (some Docker
# setups cannot export multi-platform images).
kind load docker-image --name "$CLUSTER" "$APP_IMAGE" ||
  info "could not load $APP_IMAGE: the node will pull it"

step "CRDs (kubectl apply -f crds/)"
kubectl apply -f crds/
kubectl wait --for=condition=Established --timeout=60s \
  crd/serviceidentities.custody.dev crd/accesspolicies.custody.dev

step "CA Secret and trusted issuers in $SYSTEM_NS"
kubectl create namespace "$SYSTEM_NS"
node bin/custody.mjs pki init --out "$WORK/ca"
kubectl -n "$SYSTEM_NS" create secret generic custody-ca \
  --from-file=ca.crt="$WORK/ca/ca.crt" --from-file=ca.key="$WORK/ca/ca.key"
# The customers' identity provider: generated for this run; the operator publishes its public key
# (--trusted-issuers) so that shop's sidecar admits the customers' tokens offline.
node --import tsx e2e/kind/scenarios.ts idp --out "$WORK/idp"
kubectl -n "$SYSTEM_NS" create configmap custody-trusted-issuers \
  --from-file=trusted-issuers.json="$WORK/idp/trusted-issuers.json"

step "helm install custody $CHART"
# Chart values this suite relies on (charts/custody/values.yaml):
helm_args=(
  --set "operator.image.repository=${OPERATOR_IMAGE%%:*}"
  --set "operator.image.tag=${TAG}"
  --set "operator.image.pullPolicy=IfNotPresent"
  --set "sidecar.image.repository=${SIDECAR_IMAGE%%:*}"
  --set "sidecar.image.tag=${TAG}"
  --set "operator.trustedIssuers.existingConfigMap=custody-trusted-issuers"
)
# shellcheck disable=SC2206 # word splitting is the point
[[ -z "${HELM_EXTRA_ARGS:-}" ]] || helm_args+=(${HELM_EXTRA_ARGS})
helm install custody "$CHART" --namespace "$SYSTEM_NS" "${helm_args[@]}" --wait --timeout 5m
kubectl -n "$SYSTEM_NS" get pods -o wide

step "waiting for the operator to write Custody's CA into the injection webhook"
for _ in $(seq 1 60); do
  bundle="$(kubectl get mutatingwebhookconfiguration custody-sidecar-injector \
    -o jsonpath='{.webhooks[0].clientConfig.caBundle}' 2>/dev/null || true)"
  [[ -z "$bundle" ]] || break
  sleep 2
done
[[ -n "${bundle:-}" ]] ||
  die "MutatingWebhookConfiguration custody-sidecar-injector has no caBundle after 120 s (does the chart create it under that name?)."

step "namespace $SHOP_NS: injection enabled, restricted Pod Security"
kubectl create namespace "$SHOP_NS"
kubectl label namespace "$SHOP_NS" custody.dev/injection=enabled pod-security.kubernetes.io/enforce=restricted

step "ServiceIdentities and AccessPolicies (examples/shop)"
kubectl apply -f examples/shop/identities.yaml -f examples/shop/policies.yaml
kubectl -n "$SHOP_NS" wait --for=condition=Ready --timeout=180s serviceidentities --all
kubectl -n "$SHOP_NS" wait --for=condition=Ready --timeout=180s accesspolicies --all
kubectl -n "$SHOP_NS" get serviceidentities,accesspolicies

step "shop, cart and payments (e2e/kind/shop.yaml)"
kubectl -n "$SHOP_NS" create configmap shop-apps \
  --from-file=examples/shop/apps/ --from-file=e2e/kind/apps/
kubectl apply -f e2e/kind/shop.yaml
for deployment in shop cart payments; do
  kubectl -n "$SHOP_NS" rollout status "deployment/$deployment" --timeout=300s
done
kubectl -n "$SHOP_NS" wait --for=condition=Ready --timeout=180s pod -l app.kubernetes.io/part-of=custody-e2e
kubectl -n "$SHOP_NS" get pods -o wide
for deployment in shop cart payments; do
  containers="$(kubectl -n "$SHOP_NS" get pods -l "app.kubernetes.io/name=$deployment" \
    -o jsonpath='{.items[*].spec.containers[*].name}')"
  [[ " $containers " == *" custody-sidecar "* ]] ||
    die "pod of $deployment has no custody-sidecar container (containers: $containers): the webhook did not inject it."
done
info "every pod runs its app and an injected custody-sidecar"

step "scenarios (local/src/demo, against the cluster)"
# TMPDIR: cart's key, which the attack scenarios use, stays in the work directory.
TMPDIR="$WORK" node --import tsx e2e/kind/scenarios.ts run --ca "$WORK/ca/ca.crt" --idp "$WORK/idp" --namespace "$SHOP_NS"
