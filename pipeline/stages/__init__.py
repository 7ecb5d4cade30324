"""The DVC stages: one module per `python -m pipeline <stage>` that dvc.yaml files run."""
