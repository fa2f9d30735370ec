# recpipe — the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PATH := $(CURDIR)/$(BIN):$(PATH)
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__COSMOS__ENABLE_TELEMETRY := False

BENCH_USERS ?= 1000000
BENCH_DAYS ?= 3
BENCH_METRICS_DAYS ?= 30
BENCH_DIR ?= $(CURDIR)/bench-data
SCALE_USERS ?= 1000000
SCALE_ITEMS ?= 100000
SCALE_DAYS ?= 30
ML_SRC ?= $(CURDIR)/../shared/data/movielens-100k
ML_DIR ?= $(CURDIR)/movielens-data
STUDY_DAYS ?= 14
STUDY_CONFIG ?= config/playbook-study.yaml
# each study config its own Airflow metadata (.airflow-playbook-study, .airflow-playbook-null)
STUDY_AIRFLOW = $(CURDIR)/.airflow-$(notdir $(basename $(STUDY_CONFIG)))
ML_SPLIT ?= 1998-03-31  # last training day: the last 10% of the ratings (1998-04-01..04-22) are the test

.PHONY: install system-deps demo test airflow bench bench-scale eval-movielens study clean

install: $(STAMP)

# A fresh venv, installed from the frozen constraints (every machine gets the same versions).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

system-deps:  ## PostgreSQL, Redis, Chromium and Java for the deployment, Celery, UI and Spark tests (apt-get; installs only what is missing)
	bash scripts/install-system-deps.sh

demo: $(STAMP)  ## the closed loop (config/demo.yaml): organic warm-up, then 2 days served by the recommendation path to an experiment's arms; its readout
	$(BIN)/recpipe --config config/demo.yaml demo

test: $(STAMP) system-deps  ## the whole test suite, whole modules on two workers (pytest -n 2; `.venv/bin/pytest` alone runs serially)
	$(BIN)/python -m pytest -n 2

airflow: $(STAMP)  ## the Airflow UI on http://localhost:8080 (login: see the printed password file)
	$(BIN)/recpipe airflow-setup
	@echo "Airflow UI: http://localhost:8080  user: admin  password: in $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated"
	$(BIN)/airflow standalone

bench: $(STAMP)  ## benchmarks (not tests): simulator, loader, metric marts, ItemCF/Swing, two-tower training, ANN
	rm -rf $(BENCH_DIR)
	$(BIN)/python benchmarks/bench_simulator.py --users $(BENCH_USERS) --days $(BENCH_DAYS) --out $(BENCH_DIR)/sim
	$(BIN)/python benchmarks/bench_loader.py --landing $(BENCH_DIR)/sim/landing --data-dir $(BENCH_DIR)/load
	$(BIN)/python benchmarks/bench_metrics.py --users $(BENCH_USERS) --days $(BENCH_METRICS_DAYS) --data-dir $(BENCH_DIR)/metrics
	$(BIN)/python benchmarks/bench_dbt_start.py --data-dir $(BENCH_DIR)/dbt_start
	$(BIN)/python benchmarks/bench_i2i.py
	$(BIN)/python benchmarks/bench_two_tower.py --examples 250000 --threads 1
	$(BIN)/python benchmarks/bench_ann.py --n 1000000 --dim 64 --queries 1000
	$(BIN)/python benchmarks/bench_eval_metrics.py --users 200000 --items 20000 --k 100
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_closed_loop_day.py --data-dir $(BENCH_DIR)/closed_loop_day

bench-scale: $(STAMP)  ## scale benchmark (not a test): ingest, dbt marts on DuckDB and Spark, dbt overhead, pools, KOL, training, ANN at SCALE_USERS x SCALE_ITEMS x SCALE_DAYS and at 1/10 of it; seconds, peak memory, growth, 10x/100x extrapolation
	$(BIN)/python benchmarks/bench_scale.py --users $(SCALE_USERS) --items $(SCALE_ITEMS) --days $(SCALE_DAYS) --data-dir $(BENCH_DIR)/scale

eval-movielens: $(STAMP)  ## MovieLens 100K through the input contract, then the offline retrieval and funnel evaluations (temporal split)
	bash scripts/evaluate-movielens.sh $(ML_SRC) $(ML_DIR) $(ML_SPLIT)

study: $(STAMP)  ## the playbook study: the closed loop, one arm per method against a baseline, then its readout (data-study/; STUDY_CONFIG=config/playbook-null.yaml: the levers at 0)
	AIRFLOW_HOME=$(STUDY_AIRFLOW) $(BIN)/recpipe --config $(STUDY_CONFIG) experiment run playbook --days $(STUDY_DAYS)
	AIRFLOW_HOME=$(STUDY_AIRFLOW) $(BIN)/recpipe --config $(STUDY_CONFIG) experiment readout playbook

clean:
	rm -rf data data-study data-study-null data-study-100k .airflow .airflow-* reports bench-data test-artifacts movielens-data
