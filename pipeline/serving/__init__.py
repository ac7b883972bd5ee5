"""Serving: the champion behind HTTP (`finetune serve`) and the load test that checks it (`finetune loadtest`)."""
