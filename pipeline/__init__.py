"""mnist-mlp-pipeline: a DVC + MLflow pipeline that trains an MLP on MNIST."""
