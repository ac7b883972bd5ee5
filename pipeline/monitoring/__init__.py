"""Monitoring, as a library: the prediction store many writers share (store.py), the log of served
answers that `finetune serve` writes to it (served.py), drift statistics (drift.py), the champion's
reference data (reference.py) and the per-pipeline report (report.py). flows/monitor.py
orchestrates them."""
