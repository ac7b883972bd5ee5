"""Monitoring, as a library: the prediction store (store.py), drift statistics (drift.py), the
champion's reference data (reference.py) and the per-pipeline report (report.py). flows/monitor.py
orchestrates them."""
