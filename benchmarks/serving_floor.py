"""MLflow's own floor for benchmarks/serving.py: a served model that does nothing.

It has the champion's signature (the same type hints: raw JSON rows in, labelled answers out) and
answers every row with the same fixed answer of the champion's shape, so a request costs what
MLflow's server itself costs: HTTP, JSON parsing, its checks and writing the answer.
"""

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

from pipeline.serving.served_model import Row
from pipeline.serving.service import Answer

FIXED = {
    "digit": 7,
    "probability": 0.999917,
    "probabilities": [
        0.000001,
        0.000012,
        0.000041,
        0.000003,
        0.0,
        0.0,
        0.0,
        0.999917,
        0.0,
        0.000026,
    ],
    "ood": False,
    "ood_reason": None,
}


class Floor(PythonModel):
    def predict(
        self, context: Any, model_input: list[Row], params: dict[str, Any] | None = None
    ) -> list[Answer]:
        return [FIXED] * len(model_input)  # type: ignore[list-item]


mlflow.models.set_model(Floor())
