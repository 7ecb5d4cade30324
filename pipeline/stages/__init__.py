"""The DVC stages: one module per `python -m pipeline <stage>` of dvc.yaml and
committee/dvc.yaml."""
