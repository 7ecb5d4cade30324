"""A lease lock held in the MLflow registry itself, so promotions from several machines take turns.

Promotion reads the champion, decides and moves the alias; two promoters that interleave those
steps can both read the old champion and the worse one can set the alias last. Re-reading after
the write cannot detect that, so each promoter takes this lock around the whole read-decide-write.

The lock is a registered model named `<model>.lock`. Creating a registered model is the one atomic
test-and-set MLflow's REST API offers: the name is the table's primary key, so of two concurrent
creates exactly one succeeds and the other gets RESOURCE_ALREADY_EXISTS (PostgreSQL, MySQL, SQLite
backends alike). The holder's tags say who holds it and until when (`lock.owner`,
`lock.expires_at`, Unix seconds); release deletes it. A holder that died leaves its lock behind:
once the lease plus `CLOCK_SKEW_S` has passed, a waiter breaks it. So that two waiters cannot
both break, one of them deleting the new lock the other just took, breaking is itself guarded by
a create: only the waiter that creates `<model>.lock.break.<holder hash>` deletes the stale lock.
The assumptions are the usual ones of a lease: a promotion's critical section (a few requests)
ends well within `LEASE_S`, and clients' clocks differ by less than `CLOCK_SKEW_S`.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.errors import PipelineError
from pipeline.progress import log
from pipeline.registry import tracking

LEASE_S = 60.0
CLOCK_SKEW_S = 10.0
WAIT_S = 300.0
POLL_S = 0.2
OWNER_TAG = "lock.owner"
EXPIRES_TAG = "lock.expires_at"


@dataclass(frozen=True)
class Holder:
    owner: str
    expires_at: float
    created_ms: int


def lock_name(model: str) -> str:
    return f"{model}.lock"


def _code(exc: Exception) -> str | None:
    return getattr(exc, "error_code", None)


def _create(client: Any, name: str, tags: dict[str, str]) -> bool:
    """Create registered model `name`; False if it exists already (the atomic test-and-set).

    The server answers a failed insert by reading the existing model; when its holder deleted it
    in between, that read says RESOURCE_DOES_NOT_EXIST: the lock was taken then, so False too.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, tags=tags, description="lock taken by pipeline/registry/registry_lock.py"
        )
    except MlflowException as exc:
        if _code(exc) in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
            return False
        raise
    return True


def _delete(client: Any, name: str) -> None:
    """Delete registered model `name` if it exists. That needs MANAGE on it, which MLflow gives
    its creator: a lock another user created (by hand, or a holder logged in as someone else)
    cannot be broken, and the error names it for whoever may delete it."""
    from mlflow.exceptions import MlflowException

    try:
        with tracking.permitted(
            f"delete the registry lock {name!r}",
            "deleting needs MANAGE on that registered model, which the user who created it and "
            f"admins have; have one of them delete it (MlflowClient().delete_registered_model("
            f"{name!r})) and rerun",
        ):
            client.delete_registered_model(name)
    except MlflowException as exc:
        if _code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise


def holder(client: Any, name: str) -> Holder | None:
    """Who holds lock `name` now; None when nobody does."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if _code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    try:
        expires_at = float(model.tags.get(EXPIRES_TAG, "0"))
    except ValueError:
        expires_at = 0.0  # not written by us: treat as expired once seen
    return Holder(model.tags.get(OWNER_TAG, "?"), expires_at, int(model.creation_timestamp or 0))


def _break_if_stale(client: Any, name: str, stale: Holder, now: float) -> None:
    if stale.expires_at + CLOCK_SKEW_S >= now:
        return
    digest = hashlib.sha256(f"{stale.owner}@{stale.created_ms}".encode()).hexdigest()[:16]
    marker = f"{name}.break.{digest}"
    expires = f"{now + LEASE_S:.3f}"
    if not _create(client, marker, {OWNER_TAG: "breaker", EXPIRES_TAG: expires}):
        # Another waiter is breaking it; if that waiter died too, its marker expires like a lock.
        other = holder(client, marker)
        if other is not None and other.expires_at + CLOCK_SKEW_S < now:
            _delete(client, marker)
        return
    try:
        current = holder(client, name)
        if current == stale:
            _delete(client, name)
            log(
                f"registry lock {name}: broke the lease of {stale.owner}, expired at "
                f"{stale.expires_at:.0f}"
            )
    finally:
        _delete(client, marker)


def try_acquire(client: Any, name: str, owner: str, lease_s: float = LEASE_S) -> bool:
    if _create(client, name, {OWNER_TAG: owner, EXPIRES_TAG: f"{time.time() + lease_s:.3f}"}):
        return True
    current = holder(client, name)
    if current is None:
        return False  # released in between: the next try may win
    if current.owner == owner:
        return True  # our create went through, its answer was lost and the retry saw it
    _break_if_stale(client, name, current, time.time())
    return False


def release(client: Any, name: str, owner: str) -> None:
    """Delete the lock if it is still ours (after an expired lease a waiter may have broken it)."""
    current = holder(client, name)
    if current is not None and current.owner == owner:
        _delete(client, name)


@contextmanager
def held(
    client: Any, model: str, lease_s: float = LEASE_S, wait_s: float = WAIT_S
) -> Iterator[str]:
    """Hold `<model>.lock` for the with-block's body; yields the owner id written into the lock."""
    name = lock_name(model)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    deadline = time.monotonic() + wait_s
    while not try_acquire(client, name, owner, lease_s):
        if time.monotonic() > deadline:
            current = holder(client, name)
            who = (
                f"{current.owner} until {time.ctime(current.expires_at)}"
                if current
                else "nobody now"
            )
            raise PipelineError(
                f"registry lock {name} not acquired within {wait_s:g} s (held by {who}); another "
                "promotion is running or hung. Rerun later, or delete the lock: "
                f"MlflowClient().delete_registered_model({name!r})"
            )
        time.sleep(POLL_S * random.uniform(0.5, 1.5))
    try:
        yield owner
    finally:
        release(client, name, owner)
