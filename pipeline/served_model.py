"""The served model: MLflow runs this file to load it (models-from-code), so nothing is unpickled.

train logs it with two artifacts, the pt2 graph and the off-distribution reference
(pipeline/service.py writes both), and this package as code. `mlflow models serve` answers
`{"inputs": [row, ...]}` with `{"predictions": [{"digit": ..., "probability": ..., ...}]}`; a bad
request gets HTTP 400 whose message ends with our one line naming the rows and the fix.
The type hints are the signature: any JSON rows in (we check them ourselves, with clearer
messages than a schema's), Answer out; `{"params": {"features": true}}` adds the feature vectors.
"""

from __future__ import annotations

import warnings
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from pipeline.errors import PipelineError
from pipeline.service import Answer

# MLflow warns on every load that it does not check list[Any] rows; service.py does.
warnings.filterwarnings("ignore", ".*Any type hint", UserWarning)


class ServedModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from pipeline.service import load_answerer

        self.answerer = load_answerer(context.artifacts)

    def predict(
        self, context: Any, model_input: list[Any], params: dict[str, Any] | None = None
    ) -> list[Answer]:
        try:
            rows = self.answerer.request_rows(model_input)
        except PipelineError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        features = bool((params or {}).get("features", False))
        return self.answerer.answer(rows, features)  # type: ignore[return-value]


mlflow.models.set_model(ServedModel())
