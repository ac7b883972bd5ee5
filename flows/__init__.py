"""Prefect flows that drive the DVC stages: retrain (flows/retrain.py), monitor (flows/monitor.py),
and the deployments that run them on schedules and events (flows/deploy.py)."""
