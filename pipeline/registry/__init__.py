"""MLflow, the registry and git: runs, lineage, model cards, the champion's lock and main line."""
