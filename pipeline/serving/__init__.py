"""Serving and monitoring: the served model, predict, records of its answers and drift."""
