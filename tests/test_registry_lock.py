"""The registry lease lock: taken atomically, released by its owner only, broken only once expired.

The concurrent case against a PostgreSQL-backed server is tests/test_team.py's repeated race.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.registry import registry_lock
from tests.helpers import permission_denied

MODEL = "mnist-mlp"
LOCK = registry_lock.lock_name(MODEL)


@pytest.fixture
def client(mlflow_workdir: Path):
    from mlflow import MlflowClient

    from pipeline.registry import tracking

    return MlflowClient(tracking.tracking_uri())


def test_the_lock_is_a_registered_model_while_held_and_gone_after(client) -> None:
    with registry_lock.held(client, MODEL) as owner:
        holder = registry_lock.holder(client, LOCK)
        assert holder.owner == owner and holder.expires_at > time.time() + registry_lock.LEASE_S - 5
        assert not registry_lock.try_acquire(client, LOCK, "someone else")
    assert registry_lock.holder(client, LOCK) is None


def test_a_live_lock_makes_others_wait_then_fail_with_one_clear_line(client, monkeypatch) -> None:
    monkeypatch.setattr(registry_lock, "POLL_S", 0.05)
    assert registry_lock.try_acquire(client, LOCK, "machine-a:1:x")
    started = time.monotonic()
    with (
        pytest.raises(
            PipelineError,
            match=r"registry lock mnist-mlp.lock not acquired within 0.5 s \(held by "
            r"machine-a:1:x until .*\).*delete_registered_model\('mnist-mlp.lock'\)",
        ),
        registry_lock.held(client, MODEL, wait_s=0.5),
    ):
        pass
    assert time.monotonic() - started >= 0.5
    assert registry_lock.holder(client, LOCK).owner == "machine-a:1:x", (
        "a waiter must not take a live lock"
    )


def test_an_expired_lease_is_broken_by_the_next_promoter(client) -> None:
    assert registry_lock.try_acquire(
        client, LOCK, "dead-machine:1:x", lease_s=-registry_lock.CLOCK_SKEW_S - 1
    )
    with registry_lock.held(client, MODEL, wait_s=5) as owner:
        assert registry_lock.holder(client, LOCK).owner == owner
    assert registry_lock.holder(client, LOCK) is None
    assert [m.name for m in client.search_registered_models()] == [], "the break marker is removed"


def test_release_leaves_a_lock_that_is_no_longer_ours(client) -> None:
    assert registry_lock.try_acquire(client, LOCK, "new-holder:1:x")
    registry_lock.release(client, LOCK, "old-holder:1:x")
    assert registry_lock.holder(client, LOCK).owner == "new-holder:1:x"


def test_a_lock_released_while_the_server_reports_the_conflict_means_try_again(
    client, monkeypatch
) -> None:
    """The server answers a create that lost the race by reading the winner's lock, which the
    winner may have deleted in between: RESOURCE_DOES_NOT_EXIST, seen in the repeated race."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    real = client.create_registered_model
    answers = iter(
        [
            MlflowException(
                "Registered Model with name=mnist-mlp.lock not found",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
        ]
    )

    def create(name, **kwargs):
        for error in answers:
            raise error
        return real(name, **kwargs)

    monkeypatch.setattr(client, "create_registered_model", create)
    monkeypatch.setattr(registry_lock, "POLL_S", 0.01)
    assert not registry_lock.try_acquire(client, LOCK, "me:1:x")
    with registry_lock.held(client, MODEL, wait_s=5) as owner:
        assert registry_lock.holder(client, LOCK).owner == owner


def test_a_lock_another_user_left_is_broken_at_once_or_named_if_that_is_refused(
    client, monkeypatch
) -> None:
    """A lock without our tags (made by hand, e.g. by a READ-only user) counts as expired at once;
    deleting it needs MANAGE on it, which only its creator and admins have: one line names it."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    client.create_registered_model(LOCK)  # untagged, as anyone may create a registered model
    real = client.delete_registered_model
    monkeypatch.setattr(
        client,
        "delete_registered_model",
        lambda name: permission_denied() if name == LOCK else real(name),
    )
    started = time.monotonic()
    with (
        pytest.raises(PipelineError) as refused,
        registry_lock.held(client, MODEL, wait_s=60),
    ):
        pass
    assert time.monotonic() - started < 30, "an untagged lock is no reason to wait"
    assert str(refused.value) == (
        f"MLflow tracking server {client.tracking_uri} denied permission to delete the registry "
        "lock 'mnist-mlp.lock' (anonymous access); deleting needs MANAGE on that registered "
        "model, which the user who created it and admins have; have one of them delete it "
        "(MlflowClient().delete_registered_model('mnist-mlp.lock')) and rerun"
    )
    assert [m.name for m in client.search_registered_models()] == [LOCK], "no marker is left"
    monkeypatch.setattr(client, "delete_registered_model", real)  # as its creator may
    with registry_lock.held(client, MODEL, wait_s=5) as owner:
        assert registry_lock.holder(client, LOCK).owner == owner
