"""MLflow's default floor for benchmarks/serving.py: a served no-op without type hints or input
schema, so MLflow parses each request its default way (a deep copy of the JSON rows, then one
numpy array), as it does for a model that leaves the rows to MLflow. It answers as
benchmarks/serving_floor.py does (logged with it as code)."""

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel
from serving_floor import FIXED


class UntypedFloor(PythonModel):
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return [FIXED] * len(model_input)


model: Any = UntypedFloor()
mlflow.models.set_model(model)
