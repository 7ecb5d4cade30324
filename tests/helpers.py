"""Code the tests share, imported one way: `from tests.helpers import ...`.

Fixtures stay in conftest.py (pytest finds them there); plain functions, constants and classes
live here, so that no test module imports conftest and nothing is loaded twice.
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pipeline.data.datasets import FILES, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from pipeline.data.idx import encode_idx

# Small enough for seconds per stage on synthetic data; stratified so that 60 validation images
# keep the class shares the validate stage checks.
TINY_PIPELINE = {
    "data": {"name": "custom"},
    "split": {"stratify": True},
    "model": {"hidden": [32]},
    "train": {"epochs": 2, "threads": 1},
    "report": {"tsne_samples": 50},
}

# One entry of reports/data_validation.json exactly as the validate stage writes it for the
# synthetic data: conftest's trained_workdir writes it, and tests/test_validate.py checks that the
# real stage still produces it.
VALIDATION_ENTRY = {
    "name": "pixel_max_in_range",
    "success": True,
    "observed": {"unexpected_count": 0, "examples": []},
    "checks": "no pixel above 255",
    "table": "images",
    "expectation": "expect_column_values_to_be_between",
}


def load_script(name: str) -> ModuleType:
    """<name>.py of scripts/ (operations), studies/ or docs/gen/ (doc generators) as a module
    (none of them is a package)."""
    repo = Path(__file__).resolve().parent.parent
    path = next(
        folder / f"{name}.py"
        for folder in (repo / "scripts", repo / "studies", repo / "docs" / "gen")
        if (folder / f"{name}.py").exists()
    )
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(path.parent))  # as `python <folder>/<name>.py` has it: its siblings
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def synthetic_digits(count: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: class k lights a band of rows and columns that depends on k, plus
    noise.

    Every image is distinct and none is blank, so the data checks pass on it.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(count, size, size)).astype(np.int32)
    band = max(size // 10, 1)
    for k in range(10):
        rows = slice(k * band * 3 // 4 + 2, k * band * 3 // 4 + 2 + band)
        cols = slice(size - 2 - (k + 1) * band * 3 // 4 - band, size - 2 - (k + 1) * band * 3 // 4)
        images[labels == k, rows, :] += 180
        images[labels == k, :, cols] += 120
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_dataset(folder: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """The four canonical IDX files of a synthetic dataset in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic_digits(n_train, seed)
    test_x, test_y = synthetic_digits(n_test, seed + 1)
    arrays = [
        (TRAIN_IMAGES, train_x),
        (TRAIN_LABELS, train_y),
        (TEST_IMAGES, test_x),
        (TEST_LABELS, test_y),
    ]
    for name, array in arrays:
        (folder / name).write_bytes(encode_idx(array))
    return folder


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now: for a server to start on, or be refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def background_server(
    command: list[str], ready_url: str, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """Run a server until `ready_url` answers 200 (within 180 s); killed, with every process it
    forked, whatever happens."""
    # Its own session, so that the workers it forks go down with it.
    with open(log_path, "w") as log:  # the server keeps its own copy of the file
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert server.poll() is None, f"{command[:3]} exited:\n" + log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{ready_url} not answering after 180 s"
            time.sleep(1)
        yield server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


@contextmanager
def mlflow_service(kind: str, store_uri: str, log_path: Path, *options: str) -> Iterator[str]:
    """`mlflow server` or `mlflow ui` on a free 127.0.0.1 port with one worker; yields its URL."""
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow, kind, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    with background_server(
        [*command, "--backend-store-uri", store_uri, *options], f"{url}/health", log_path
    ):
        yield url


def files_holding(root: Path, *secrets: str) -> list[str]:
    """The files under `root` whose bytes contain any of `secrets`: the leak tests' last check."""
    needles = [secret.encode() for secret in secrets]
    return [
        str(path)
        for path in root.rglob("*")
        if path.is_file() and any(needle in path.read_bytes() for needle in needles)
    ]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def read_history(path: Path) -> list[dict[str, str]]:
    """reports/train_history.csv's rows. It holds no wall time (artifacts.HISTORY_COLUMNS), so
    identical runs give identical rows."""
    return read_rows(path)


# What the "auth" mode of MirrorServer asks for; the '@' makes the URL carry it percent-encoded.
MIRROR_USER, MIRROR_PASSWORD = "alice", "s3cr3t@42"


class MirrorServer:
    """Serves the four files under /<mode>/<file name>; counts every request per (mode, file).

    Each mode misbehaves in its own way (see do_GET); "auth" serves only with MIRROR_USER and
    MIRROR_PASSWORD as HTTP basic auth.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.hits: Counter[tuple[str, str]] = Counter()
        self.release = threading.Event()  # ends stalled responses at teardown
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    @classmethod
    def of(cls, folder: Path) -> MirrorServer:
        """A server for the four files in `folder`."""
        return cls({f: (folder / f).read_bytes() for f in FILES})

    def url(self, mode: str, credentials: bool = False) -> str:
        """The mirror URL of `mode`; with credentials, it carries the "auth" mode's user and
        password."""
        userinfo = (
            f"{MIRROR_USER}:{urllib.parse.quote(MIRROR_PASSWORD, safe='')}@" if credentials else ""
        )
        return f"http://{userinfo}127.0.0.1:{self.httpd.server_address[1]}/{mode}/"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        token = base64.b64encode(f"{MIRROR_USER}:{MIRROR_PASSWORD}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, body: bytes, length: int | None = None) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def do_GET(self) -> None:
                _, mode, fname = self.path.split("/", 2)
                server.hits[mode, fname] += 1
                body = server.files.get(fname)
                if body is None or mode == "404":
                    self.send_error(404)
                elif mode == "500" or (mode == "flaky" and server.hits[mode, fname] == 1):
                    self.send_error(500)
                elif mode == "wrong":  # a valid IDX file, but not the one asked for
                    self._send(server.files[FILES[3] if fname != FILES[3] else FILES[2]])
                elif mode == "junk":  # an HTML error page served with status 200
                    self._send(b"<html>mirror moved</html>")
                elif mode == "truncated":
                    self._send(body[: len(body) // 2], length=len(body))
                elif mode == "stall":
                    self._send(body[:100], length=len(body))
                    server.release.wait(20)
                elif mode == "silent":
                    server.release.wait(20)
                elif mode == "auth" and self.headers.get("Authorization") != f"Basic {token}":
                    self.send_error(401)
                else:
                    self._send(body)

        return Handler

    def __enter__(self) -> MirrorServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def answer_table(wrong: dict[int, int] | None = None, per_digit: int = 100) -> Any:
    """A predictions.csv table: `per_digit` test images per digit, all right except the first
    `wrong[d]` of digit d (predicted as d+1)."""
    import pandas as pd

    actual = np.repeat(np.arange(10), per_digit)
    predicted = actual.copy()
    for digit, count in (wrong or {}).items():
        predicted[digit * per_digit : digit * per_digit + count] = (digit + 1) % 10
    columns = {"index": np.arange(len(actual)), "actual": actual, "predicted": predicted}
    return pd.DataFrame({**columns, "confidence": 0.9})


def log_promotion_evidence(
    client: Any,
    run_id: str,
    accuracy: float | None,
    ece: float = 0.003,
    answers: Any = None,
    inputs: int = 784,
) -> None:
    """What train and evaluate leave in a run for promote to compare: test_accuracy and test_ece
    (unless accuracy is None), the model's signature (its MLmodel file only) and
    evaluation/predictions.csv."""
    from mlflow.models import Model, infer_signature

    if accuracy is not None:
        client.log_metric(run_id, "test_accuracy", accuracy)
        client.log_metric(run_id, "test_ece", ece)
    signature = infer_signature(np.zeros((2, inputs), np.float32), np.zeros((2, 10), np.float32))
    client.log_dict(run_id, Model(signature=signature).to_dict(), "model/MLmodel")
    table = answer_table() if answers is None else answers
    client.log_text(run_id, table.to_csv(index=False), "evaluation/predictions.csv")


def serve_command(model_uri: str, port: int) -> list[str]:
    """`mlflow models serve` of `model_uri` on 127.0.0.1:`port`, as the docs tell users."""
    return [
        *(sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri),
        *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)),
    ]


def permission_denied(*args: Any, **kwargs: Any) -> None:
    """Stands in for a registry or run write that a basic-auth server refuses: MLflow's client
    turns the plain-text 403 into this (mlflow/utils/rest_utils.py, verify_rest_response)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    raise MlflowException(
        "API request to endpoint /api/2.0/mlflow/... failed with error code 403 != 200. "
        "Response body: 'Permission denied'",
        error_code=PERMISSION_DENIED,
    )


def train_tiny(size: int, seed: int = 0) -> Any:
    """A small MLP fitted to synthetic digits, so that its predictions vary from image to image."""
    import torch
    import torch.nn.functional as F

    from pipeline.data.loading import resize
    from pipeline.learner.model import MLP, Architecture

    images, labels = synthetic_digits(600, seed)
    pixels = resize(torch.from_numpy(images), size).float() / 255
    torch.manual_seed(seed)
    model = MLP(Architecture(size, (32,)), float(pixels.mean()), float(pixels.std()))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    targets = torch.from_numpy(labels).long()
    for _ in range(40):
        optimizer.zero_grad()
        F.cross_entropy(model(pixels), targets).backward()
        optimizer.step()
    return model.eval()


def git(*args: str, cwd: Path | None = None) -> str:
    """A git command's stripped stdout; raises when it fails."""
    return subprocess.run(
        ["git", *args], check=True, capture_output=True, text=True, cwd=cwd, timeout=60
    ).stdout.strip()


def empty_checkout(tmp_path: Path, monkeypatch: Any) -> Path:
    """tmp_path/repo as cwd, for `git init`: git never looks above tmp_path, and commits have an
    author."""
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")
    return root
