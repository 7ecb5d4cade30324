"""The team's two users on an MLflow server run with `--app-name basic-auth`, as its admin.

    MLFLOW_TRACKING_URI=... MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=... \\
    CI_USER_PASSWORD=... VIEWER_USER_PASSWORD=... python scripts/mlflow_users.py [params.yaml]

- `ci` (the retrain job) gets EDIT on the experiment and the registered model that params.yaml
  names: it creates runs in the experiment, versions of the model and moves its `champion` alias
  (MLflow's alias route needs can_update, which EDIT is the least permission to give; deleting an
  alias would need MANAGE, which promote never does).
- `viewer` gets READ on both: it lists runs, reads metrics and models, and changes none of them.

Both are created when missing, and an existing user's password is set to the given one, so the
same command rotates passwords. The experiment and the model are created (owned by the admin)
when missing. scripts/stack.sh runs it on every start; docs/team.md runs it on a real server.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException
from mlflow.server import get_app_client

from pipeline.config import PARAMS_FILE, load_params
from pipeline.registry.tracking import registered_name

GRANTS = {"ci": "EDIT", "viewer": "READ"}


def ensure_user(auth: Any, username: str, password: str) -> None:
    try:
        auth.get_user(username)
    except RestException:
        auth.create_user(username, password)
        print(f"mlflow_users: created user {username}")
        return
    auth.update_user_password(username, password)
    print(f"mlflow_users: set the password of user {username}")


def grant(auth: Any, username: str, kind: str, resource: str, permission: str) -> None:
    """Give `permission` on the resource, replacing an earlier grant (MLflow refuses a second)."""
    try:
        auth.grant_user_permission(username, kind, resource, permission)
    except RestException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(username, kind, resource)
        auth.grant_user_permission(username, kind, resource, permission)


def main(argv: list[str]) -> int:
    uri = os.environ["MLFLOW_TRACKING_URI"]
    params = load_params(Path(argv[0]) if argv else PARAMS_FILE)
    experiment = params.mlflow.experiment
    # A data.image_size other than 28 trains into its own model (tracking.registered_name).
    model = registered_name(params.mlflow.registered_model, params.data.image_size)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    try:
        client.get_registered_model(model)
    except MlflowException:
        client.create_registered_model(model)
    auth = get_app_client("basic-auth", tracking_uri=uri)
    for username, permission in GRANTS.items():
        ensure_user(auth, username, os.environ[f"{username.upper()}_USER_PASSWORD"])
        grant(auth, username, "experiment", experiment_id, permission)
        grant(auth, username, "registered_model", model, permission)
        print(f"mlflow_users: {username}: {permission} on experiment {experiment}, model {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
