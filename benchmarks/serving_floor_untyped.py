"""MLflow's default floor for benchmarks/serving.py: a served no-op without type hints or input
schema, so MLflow parses each request its default way (a deep copy of the JSON rows, then one
numpy array), as it does for a model that leaves the rows to MLflow. It answers as
benchmarks/serving_floor.py does (logged with it as code). Having no params schema, it ignores
the packed requests' params; MLflow's warning about that on every request is silenced, as it
would otherwise be timed."""

import logging
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel
from serving_floor import FIXED


class UntypedFloor(PythonModel):
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return [FIXED] * len(model_input)


logging.getLogger("mlflow.models.utils").setLevel(logging.ERROR)
model: Any = UntypedFloor()
mlflow.models.set_model(model)
