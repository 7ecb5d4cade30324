"""The run description and model card that evaluate completes (pipeline/registry/model_card.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.registry import model_card

METRICS = {"test_accuracy": 0.9953, "valid_accuracy": 0.9961, "macro_f1": 0.9952}
PER_CLASS = pd.DataFrame(
    {"class": [0], "precision": [0.99], "recall": [0.98], "f1": [0.985], "support": [980]}
)
COMMITTEE_NOTE = (
    "A committee of 5 MLPs (seeds 1, 2, 3, 4, 5) voting by their mean softmax output. "
    + model_card.describe_run({"train.seed": 12345}, "abc123", None)
)


def completed_card(tags: dict[str, str]) -> tuple[str, str]:
    """The run's description and model_card.md after evaluate completes a run with `tags`."""
    import mlflow

    mlflow.set_experiment("mnist-mlp")
    with mlflow.start_run(tags=tags) as run:
        mlflow.log_param("data.image_size", 28)
    model_card.complete(run.info.run_id, METRICS, PER_CLASS)
    client = mlflow.MlflowClient()
    note = client.get_run(run.info.run_id).data.tags["mlflow.note.content"]
    card = Path(client.download_artifacts(run.info.run_id, model_card.CARD_FILE)).read_text()
    return note, card


def test_a_committee_keeps_its_description_and_names_its_pipeline(mlflow_workdir: Path) -> None:
    tags = {"mlflow.note.content": COMMITTEE_NOTE, model_card.COMMITTEE_TAG: "r1,r2,r3,r4,r5"}
    note, card = completed_card(tags)
    kept = COMMITTEE_NOTE.removesuffix(" Result: test accuracy: not evaluated yet.")
    assert note == f"{kept} Result: test accuracy 0.9953."
    assert f"\n{note}\n" in card
    assert "\ndvc repro committee/dvc.yaml   # or: make committee\n" in card


def test_a_single_model_is_reproduced_by_dvc_repro(mlflow_workdir: Path) -> None:
    note, card = completed_card({})  # a run opened without a description gets train's
    assert note.startswith("MLP 784-10") and note.endswith(" Result: test accuracy 0.9953.")
    assert "\ndvc repro\n" in card
    # the served contract, in words: what a client sends and gets
    assert "each row 784 pixel values in [0, 1] or a PNG or\nJPEG file as base64" in card
    assert "`digit`, `probability`, the 10 `probabilities`,\n`ood` and `ood_reason`" in card


def test_the_result_is_replaced_not_repeated() -> None:
    once = model_card.with_result("A committee. MLP 784-10.", 0.9)
    assert (
        model_card.with_result(once, 0.95)
        == "A committee. MLP 784-10. Result: test accuracy 0.9500."
    )
