# The verbs a person expects. Every target here does real work; new ones arrive with the issues
# that make them real. `images` and `e2e-kind` need Docker, which CI here does not have.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

NPM ?= npm

.PHONY: help install build typecheck lint format crds control-plane node test test-cluster test-clock-shift bench demo helm-lint images e2e-kind e2e-cluster e2e-cluster-down

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

bench: install ## Benchmarks: call chains vs the talk's nested format; token service vs bare TLS handshakes
	$(NPM) run --silent bench:chain
	$(NPM) run --silent bench:issuer
	$(NPM) run --silent bench:sidecar
	$(NPM) run --silent bench:operator

# Reinstall only when the lock file changed since the last install.
node_modules/.package-lock.json: package.json package-lock.json
	$(NPM) ci
	@touch $@

install: node_modules/.package-lock.json ## Install dependencies (npm ci) and build the CLI

build: install ## Compile TypeScript to dist/ (what bin/custody.mjs runs)
	$(NPM) run --silent build

typecheck: install ## tsc --noEmit over sources and tests
	$(NPM) run --silent typecheck

lint: install ## Biome lint + format check
	$(NPM) run --silent lint

format: install ## Apply Biome formatting and safe fixes
	$(NPM) run --silent format

demo: build ## The talk's shop → cart → payments scenario, locally
	node bin/custody.mjs demo

crds: install ## Regenerate crds/*.yaml from the zod schemas in crds/src
	$(NPM) run --silent crds

control-plane: ## Build etcd and Kubernetes (apiserver, controller-manager, scheduler, kubelet, kube-proxy) from source into ~/.cache/custody; reused
	bash e2e/control-plane/build.sh

node: control-plane ## Build the test node (containerd, runc, pause and base images) into ~/.cache/custody; reused; needs root
	bash e2e/node/build.sh

test: install typecheck lint build ## Typecheck, lint, build, the whole suite, then the one-node cluster suite (Kubernetes suites need `make node` first)
	$(NPM) test
	$(MAKE) --no-print-directory test-cluster

test-cluster: build ## The one-node cluster suite alone (e2e/cluster): helm install, the shop example, day-2 operations, Prometheus
	npx vitest run --config e2e/cluster/vitest.config.ts

test-clock-shift: build ## The suite again with the clock 400 and 730 days ahead (libfaketime): no test may depend on the date
	bash e2e/clock-shift.sh

helm-lint: install ## Helm chart: lint --strict, rendered objects vs Kubernetes schemas, RBAC allow-list, values schema, promtool rules
	CUSTODY_REQUIRE_ALL=1 npx vitest run e2e/test/helm-chart.test.ts

IMAGE_REGISTRY ?= ghcr.io/custody-dev
IMAGE_TAG ?= $(shell node -p "require('./package.json').version")

images: ## Build the operator, sidecar and init (traffic capture) images (needs Docker with BuildKit)
	docker build -f Dockerfile.operator -t $(IMAGE_REGISTRY)/custody-operator:$(IMAGE_TAG) .
	docker build -f Dockerfile.sidecar -t $(IMAGE_REGISTRY)/custody-sidecar:$(IMAGE_TAG) .
	docker build -f Dockerfile.init -t $(IMAGE_REGISTRY)/custody-init:$(IMAGE_TAG) .

e2e-kind: build ## End to end on a throw-away kind cluster (Docker, kind, kubectl, helm; KEEP_CLUSTER=1 keeps it)
	bash e2e/kind/run.sh

e2e-cluster: node build ## The one-node cluster suite on this machine (root); KEEP_CLUSTER=1 leaves the cluster up for kubectl
	CUSTODY_REQUIRE_ALL=1 npx vitest run --config e2e/cluster/vitest.config.ts

e2e-cluster-down: ## Stop a cluster left up by KEEP_CLUSTER=1 (and remove whatever a killed run left)
	node --import tsx e2e/cluster/host.ts down
