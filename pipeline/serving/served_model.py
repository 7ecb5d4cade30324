"""The served model: MLflow runs this file to load it (models-from-code), so nothing is unpickled.

train logs it with two artifacts, the pt2 graph and the off-distribution reference
(pipeline/serving/service.py writes both), and this package as code. `mlflow models serve` answers
`{"inputs": [row, ...]}` with `{"predictions": [{"digit": ..., "probability": ..., ...}]}`; a bad
request gets HTTP 400 whose message ends with our one line naming the rows and the fix.
The type hints are the signature: rows of pixels or pictures in (unchecked by MLflow: we check
them ourselves, with clearer messages than a schema's), Answer out; `{"params": {"features":
true}}` adds the feature vectors, and `{"params": {"packed": "uint8"}}` (or "float32") reads each
row as the base64 of its pixels.
"""

import logging
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from pipeline.errors import PipelineError
from pipeline.serving.service import NOT_PACKED, Answer

# A row is pixel values or a base64 picture; MLflow logs on every load that it does not check
# such a union itself. service.py does, with messages that name the row and the fix.
logging.getLogger("mlflow.types.type_hints").setLevel(logging.ERROR)
Row = list[float] | str


class ServedModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from pipeline.serving.service import answerer_from_artifacts

        self.answerer = answerer_from_artifacts(context.artifacts)

    def predict(
        self, context: Any, model_input: list[Row], params: dict[str, Any] | None = None
    ) -> list[Answer]:
        params = params or {}
        try:
            rows = self.answerer.request_rows(model_input, params.get("packed", NOT_PACKED))
        except PipelineError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        features = bool(params.get("features", False))
        return self.answerer.answer(rows, features)  # type: ignore[return-value]


mlflow.models.set_model(ServedModel())
