"""finetune-pipeline: DVC stages, MLflow tracking and registry, Prefect flows for fine-tuning transformers."""
