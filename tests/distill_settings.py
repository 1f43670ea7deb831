"""Shared by tests/test_distill.py and tests/distill_worker.py: the data-parallel run's settings."""

SETTINGS = {"steps": 3, "batch_size": 4, "seq_len": 32, "learning_rate": 3e-3, "seed": 3}
