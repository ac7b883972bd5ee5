# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test test-fast ui clean

setup: $(BIN)/finetune

$(BIN)/finetune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

run: setup
	dvc repro
	@echo
	@echo "Metrics:      metrics/sentiment.json, metrics/ner.json   (dvc metrics show)"
	@echo "Plots:        dvc plots show           (then open dvc_plots/index.html)"
	@echo "Promotion:    reports/sentiment/promotion.json"
	@echo "Data checks:  reports/sentiment/data_docs/index.html, quarantine in data/quarantine/"
	@echo "MLflow UI:    make ui                  (then open http://127.0.0.1:5000)"
	@echo "Predict:      .venv/bin/finetune predict \"Operating profit rose to EUR 13.1 mn\""
	@echo "NER:          .venv/bin/finetune predict --pipeline ner \"Siemens said in Munich ...\"   (metrics/ner.json)"
	@echo "Translation:  add translation to tasks in params.yaml (see docs/tasks.md)"
	@echo "Label next:   .venv/bin/finetune select   (the pool texts the champion is least sure of -> data/to_label/)"

test: setup
	$(BIN)/python -m pytest -q --durations=25  # the slowest 25, to see where CI time goes

test-fast: setup
	$(BIN)/python -m pytest -q -m "not model and not e2e"

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf data/raw data/clean data/quarantine data/split data/augmented models metrics reports .checkpoints dvc_plots
