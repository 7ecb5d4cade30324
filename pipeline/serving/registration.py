"""Registering a trained model as the service clients call: train and committee log it into their
run as pipeline/serving/served_model.py with its artifacts (pipeline/serving/service.py), register
it under the name of its input contract, and describe the version (pipeline/registry/model_card.py).

Only those two stages import this module, so a change to the served code reruns them, and not
evaluate, report or promote.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.learner.model import Classifier
from pipeline.registry import model_card, tracking
from pipeline.serving import records, service


@contextmanager
def records_off() -> Iterator[None]:
    """No records (pipeline/serving/records.py) from this process inside: restored after."""
    before = os.environ.get(records.RECORDS_ENV)
    os.environ[records.RECORDS_ENV] = records.OFF
    try:
        yield
    finally:
        if before is None:
            del os.environ[records.RECORDS_ENV]
        else:
            os.environ[records.RECORDS_ENV] = before


# What the served model imports (pipeline/serving/served_model.py, pipeline/serving/service.py),
# pinned.
SERVED_REQUIREMENTS = ("torch", "mlflow", "numpy", "pandas", "pillow", "pydantic")


def log_and_register(
    model: Classifier,
    loss: str,
    references: service.References,
    params: Params,
    valid_accuracy: float,
) -> None:
    """train and committee: log `model` into the active run as the served model
    (log_model), register it under the name of its input contract, describe the version."""
    import mlflow

    name = tracking.registered_name(params.mlflow.registered_model, params.data.image_size)
    info = log_model(model, loss, references, name)
    run = mlflow.active_run()
    assert run is not None, "the caller opens the run the model is logged into"
    client = mlflow.MlflowClient()
    model_card.register(
        client,
        name,
        str(info.registered_model_version),
        client.get_run(run.info.run_id),
        valid_accuracy,
    )


def log_model(
    model: Classifier, loss: str, references: service.References, registered_model: str
) -> Any:
    """Log the served model and register it: pipeline/serving/served_model.py as models-from-code,
    with the pt2 graph and the off-distribution and monitoring references as artifacts and this
    package as code (pipeline/serving/service.py), so loading it unpickles nothing and it answers as
    predict does.

    Its signature comes from the served model's type hints (rows in, labelled answers out), with
    the `features` and `packed` params from the input example. Pip requirements are given, not
    inferred (inference reloads the model in a subprocess): what loading and calling it imports,
    at the versions requirements/base.txt pins (`make lock`), so serving gets the pinned
    environment.
    """
    import re
    import shutil
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.serving import served_model

    package = Path(__file__).resolve().parents[1]  # the whole pipeline package
    pins = (package.parent / "requirements" / "base.txt").read_text()
    pinned = dict(re.findall(r"^([a-z0-9.-]+)==(\S+)$", pins, re.MULTILINE))
    requirements = [f"{name}=={pinned[name]}" for name in SERVED_REQUIREMENTS]
    example = np.full((2, references.ood.image_size**2), 0.0, np.float32).tolist()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        artifacts = service.write_artifacts(model, loss, references, folder)
        code = folder / "code" / package.name
        shutil.copytree(package, code, ignore=shutil.ignore_patterns("__pycache__"))
        try:
            # MLflow loads the model and answers the input example: that is no client's request
            with records_off():
                return mlflow.pyfunc.log_model(
                    name="model",
                    python_model=served_model.__file__,
                    artifacts=artifacts,
                    code_paths=[str(code)],
                    input_example=(example, {"features": False, "packed": service.NOT_PACKED}),
                    registered_model_name=registered_model,
                    pip_requirements=requirements,
                    metadata={
                        "image_size": references.ood.image_size,
                        "contract": service.CONTRACT,
                    },
                )
        except (MlflowException, OSError) as exc:  # requests' errors are OSErrors
            # MLflow uploads the files before it registers, so a failed upload leaves no version.
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise PipelineError(
                f"could not store the model in MLflow's artifact store ({first}); no model "
                "version was registered. Check that the tracking server reaches its object "
                "storage, then rerun: dvc repro train"
            ) from None
