"""Serving speed: the champion through the real `mlflow models serve`, against MLflow's floor and
the bare forward pass, and a one-minute load test.

    python benchmarks/serving.py            # after dvc repro: serves models/model.pt
    python benchmarks/serving.py --quick    # fewer requests, a 10 s load test, docs untouched

Columns, all on this machine in one run, servers and the forward pass on one thread each:
- limit: the exported graph's forward pass in process, on rows already in memory, in a tight loop
  (the model's weights stay in the caches), and again with the caches emptied before each call,
  as a server's JSON work between two requests empties them;
- ours in process: what the champion adds to a request, without HTTP: the request's rows checked
  and converted (pictures decoded and preprocessed), the forward pass, the off-distribution
  check and the labelled answer (pipeline/serving/service.py);
- floor: a served no-op with the champion's signature (benchmarks/serving_floor.py): MLflow's HTTP,
  JSON parsing and answer writing alone;
- MLflow's default floor: the same no-op without type hints (benchmarks/serving_floor_untyped.py),
  so MLflow turns the rows into an array its own way, as for a model that leaves parsing to it;
- champion: the model as train registers it (pipeline/serving/registration.py), in a scratch MLflow
  store, not recording; beside it the same model recording every answer into a scratch folder, for
  what recording costs (pipeline/serving/records.py). The four servers run side by side and are
  timed in alternating rounds, so load from other processes hits both alike. The load test is locust
  (benchmarks/locustfile.py): concurrent users posting one-image requests, with one picture request
  in ten.

Writes reports/benchmarks-serving.json (-quick.json with --quick) and, in a full run, the table
between the serving markers in docs/benchmarks.md and the `serving` key of reports/benchmarks.json.
"""

from __future__ import annotations

import argparse
import base64
import csv
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline import atomic, numerics  # noqa: E402
from pipeline.data.loading import load_dataset  # noqa: E402
from pipeline.learner.model import classifier_from_checkpoint, load_checkpoint  # noqa: E402
from pipeline.paths import (  # noqa: E402
    MODEL_FILE,
    MONITOR_REFERENCE_FILE,
    OOD_REFERENCE_FILE,
    RAW_DIR,
)
from pipeline.serving.drift import Reference as MonitorReference  # noqa: E402
from pipeline.serving.ood import read_reference  # noqa: E402
from pipeline.serving.service import (  # noqa: E402
    NOT_PACKED,
    Answerer,
    References,
    export_graph,
    load_graph,
)

TABLE_START = "<!-- serving:start (written by benchmarks/serving.py) -->"
TABLE_END = "<!-- serving:end -->"
PAGE = REPO / "docs" / "benchmarks.md"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
USERS = 4  # locust's concurrent clients: twice the cores of the 2-core machine


def result_name(quick: bool) -> str:
    return "benchmarks-serving-quick.json" if quick else "benchmarks-serving.json"


def png(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def request_bodies(images: np.ndarray) -> dict[str, dict[str, Any]]:
    """The request kinds, as a client sends them: pixel rows in [0, 1] as JSON numbers or packed
    (each row the base64 of its uint8 pixels), or PNG files."""
    rows = (images.reshape(len(images), -1) / 255).round(6).tolist()
    packed = [base64.b64encode(image.tobytes()).decode() for image in images]
    pictures = [png(image) for image in images[:32]]
    uint8 = {"packed": "uint8"}
    return {
        "1 image": {"inputs": rows[:1]},
        "256 images": {"inputs": rows[:256]},
        "1 image, packed": {"inputs": packed[:1], "params": uint8},
        "256 images, packed": {"inputs": packed[:256], "params": uint8},
        "1 picture": {"inputs": pictures[:1]},
        "32 pictures": {"inputs": pictures[:32]},
    }


def serve_env(store: str, records: str) -> dict[str, str]:
    return {
        **os.environ,
        **ONE_THREAD,
        "MLFLOW_TRACKING_URI": store,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        "MNIST_RECORDS": records,  # pipeline/serving/records.py: a folder, or off
    }


@contextmanager
def served(uri: str, store: str, log: Path, records: str = "off") -> Iterator[int]:
    """`mlflow models serve` of `uri` on a free port until it answers /ping; yields the port."""
    import signal
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mlflow = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow, "models", "serve", "-m", uri, "--env-manager", "local"]
    with open(log, "w") as out:
        server = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=serve_env(store, records),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while not ping(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"error: {uri} did not start serving:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def ping(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/ping")
        return connection.getresponse().status == 200
    except OSError:
        return False


def timed_requests(port: int, body: bytes, count: int) -> list[float]:
    """Seconds of each of `count` POSTs on one kept-alive connection; every answer must be 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        connection.request("POST", "/invocations", body, headers)
        response = connection.getresponse()
        payload = response.read()
        seconds.append(time.perf_counter() - start)
        if response.status != 200:
            raise SystemExit(f"error: the server answered {response.status}: {payload[-300:]!r}")
    connection.close()
    return seconds


EVICT = np.ones(64 * 2**20 // 8)  # 64 MiB, more than the caches of these CPUs hold


def in_process(seconds_of: Any, repeats: int, cold: bool = False) -> list[float]:
    """Seconds of each call; `cold` reads EVICT before each one (untimed), so the model's weights
    are out of the caches, as they are when a server has parsed and written JSON since its last
    forward pass."""
    times = []
    for _ in range(repeats):
        if cold:
            EVICT.sum()
        start = time.perf_counter()
        seconds_of()
        times.append(time.perf_counter() - start)
    return times


def summary(seconds: list[float], images: int) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    p50 = float(np.percentile(ms, 50))
    return {
        "p50_ms": round(p50, 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "images_per_s": round(images / p50 * 1000, 1),
        "requests": len(seconds),
    }


def register(store: str, model: Any, loss: str, references: References, scratch: Path) -> None:
    """The champion as train registers it, and the floor beside it, in a scratch store."""
    import mlflow

    from pipeline.registry import tracking
    from pipeline.serving import registration

    os.environ["MLFLOW_TRACKING_URI"] = store
    tracking.configure()
    tracking.use_experiment("serving-benchmark")  # artifacts beside the scratch store
    code = scratch / "code" / "pipeline"
    shutil.copytree(REPO / "pipeline", code, ignore=shutil.ignore_patterns("__pycache__"))
    with mlflow.start_run():
        registration.log_model(model, loss, references, "champion")
        # the typed floor takes the champion's params too, so MLflow checks them alike
        rows = [[0.0] * references.ood.image_size**2] * 2
        examples = {
            "serving_floor": (rows, {"features": False, "packed": NOT_PACKED}),
            "serving_floor_untyped": None,
        }
        for name, example in examples.items():
            mlflow.pyfunc.log_model(
                name=name,
                python_model=str(REPO / "benchmarks" / f"{name}.py"),
                code_paths=[str(code), str(REPO / "benchmarks" / "serving_floor.py")],
                input_example=example,
                registered_model_name=name,
                pip_requirements=["mlflow"],
            )


def locust(port: int, body_file: Path, seconds: int, scratch: Path) -> dict[str, Any]:
    """locust, headless, USERS users for `seconds`: requests, failures, p99 and throughput."""
    prefix = scratch / "locust"
    command = [
        str(Path(sys.executable).parent / "locust"),
        *("-f", str(REPO / "benchmarks" / "locustfile.py"), "--headless"),
        *("-u", str(USERS), "-r", str(USERS), "-t", f"{seconds}s"),
        *("--host", f"http://127.0.0.1:{port}", "--csv", str(prefix), "--only-summary"),
    ]
    env = {**os.environ, "SERVING_BODIES": str(body_file)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds + 120)
    rows = list(csv.DictReader(Path(f"{prefix}_stats.csv").read_text().splitlines()))
    total = next(row for row in rows if row["Name"] == "Aggregated")
    return {
        "users": USERS,
        "seconds": seconds,
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
        "requests_per_s": round(float(total["Requests/s"]), 1),
        "exit_code": done.returncode,
        "by_request": {
            row["Name"]: {"requests": int(row["Request Count"]), "p99_ms": float(row["99%"])}
            for row in rows
            if row["Name"] != "Aggregated"
        },
    }


def recorded_rows(folder: Path) -> int:
    import pyarrow.dataset as ds

    if not folder.exists():
        return 0
    return ds.dataset(folder, format="parquet", partitioning="hive").count_rows()


def measure(quick: bool) -> dict[str, Any]:
    needed = (MODEL_FILE, OOD_REFERENCE_FILE, MONITOR_REFERENCE_FILE)
    if missing := [str(path) for path in needed if not path.exists()]:
        raise SystemExit(f"error: {', '.join(missing)} missing; run dvc repro")
    torch.set_num_threads(1)
    payload = load_checkpoint(MODEL_FILE)
    model = classifier_from_checkpoint(payload).eval()
    loss = str(payload["loss"])
    reference = read_reference(OOD_REFERENCE_FILE)
    assert reference is not None  # checked above
    references = References(reference, MonitorReference.load(MONITOR_REFERENCE_FILE))
    images = load_dataset(RAW_DIR, 28).test_images[:256].numpy()
    bodies = request_bodies(images)
    rounds, per_round = (3, 10) if quick else (10, 40)
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        scratch = Path(folder)
        store = f"sqlite:///{scratch / 'mlflow.db'}"
        register(store, model, loss, references, scratch)
        export_graph(model, loss, reference.image_size, scratch / "graph.pt2")
        answerer = Answerer(load_graph(scratch / "graph.pt2"), reference.image_size, reference)
        uris = {
            "floor": "models:/serving_floor/1",
            "untyped_floor": "models:/serving_floor_untyped/1",
            "champion": "models:/champion/1",
        }
        ports = {
            name: stack.enter_context(served(uri, store, scratch / f"{name}.log"))
            for name, uri in uris.items()
        }
        # the champion again, recording every answer as it does by default
        # (pipeline/serving/records.py)
        ports["recording"] = stack.enter_context(
            served(uris["champion"], store, scratch / "recording.log", str(scratch / "records"))
        )
        rows = {}
        for kind, request in bodies.items():
            body = json.dumps(request).encode()
            inputs, packed = request["inputs"], request.get("params", {}).get("packed", NOT_PACKED)
            count = len(inputs)
            tensor = answerer.request_rows(inputs, packed)
            with torch.no_grad():
                limit = in_process(lambda t=tensor: answerer.graph(t), rounds * per_round)
                limit_cold = in_process(
                    lambda t=tensor: answerer.graph(t), rounds * per_round, cold=True
                )
            ours = in_process(
                lambda i=inputs, p=packed: answerer.answer(answerer.request_rows(i, p)),
                rounds * per_round,
            )
            rows_only = in_process(
                lambda i=inputs, p=packed: answerer.request_rows(i, p), rounds * per_round
            )
            times: dict[str, list[float]] = {name: [] for name in ports}
            for name in times:  # warm both up: the first requests load lazily
                timed_requests(ports[name], body, 5)
            for _ in range(rounds):
                for name in times:
                    times[name] += timed_requests(ports[name], body, per_round)
            rows[kind] = {
                "images": count,
                "limit": summary(limit, count),
                "limit_cold": summary(limit_cold, count),
                "ours_in_process": summary(ours, count),
                # of which: checking and converting the rows (pictures: decoding, framing)
                "rows_in_process": summary(rows_only, count),
                **{name: summary(seconds, count) for name, seconds in times.items()},
            }
        body_file = scratch / "bodies.json"
        body_file.write_text(json.dumps(bodies))
        before = recorded_rows(scratch / "records")
        load = locust(ports["recording"], body_file, 10 if quick else 60, scratch)
        load["recorded"] = recorded_rows(scratch / "records") - before  # one row per request
    return {
        "command": "python benchmarks/serving.py" + (" --quick" if quick else ""),
        "quick": quick,
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip(),
        "machine": numerics.environment(),
        "threads": 1,
        "rows": rows,
        "load_test": load,
    }


TARGET = 2.0  # what the champion adds above the floor, in forward passes (docs/benchmarks.md)


def above_floor(row: dict[str, Any], limit: str = "limit") -> float:
    """What the served champion adds to the no-op floor, in forward passes (p50s): hot (`limit`)
    or with cold caches (`limit_cold`)."""
    return (row["champion"]["p50_ms"] - row["floor"]["p50_ms"]) / row[limit]["p50_ms"]


def markdown_table(result: dict[str, Any]) -> str:
    columns = (
        "limit",
        "limit_cold",
        "ours_in_process",
        "rows_in_process",
        "floor",
        "untyped_floor",
        "champion",
    )
    lines = [
        "| request | limit: forward pass | forward pass, cold caches | ours, in process | of which "
        "reading the rows | floor: no-op served | MLflow's default floor | champion served | "
        "champion above floor | that ÷ forward pass | that ÷ cold forward pass |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, row in result["rows"].items():
        above = row["champion"]["p50_ms"] - row["floor"]["p50_ms"]
        cells = [f"{row[c]['p50_ms']:.2f}" for c in columns]
        lines.append(
            f"| {kind}, p50 ms | {' | '.join(cells)} | {above:.2f} | {above_floor(row):.1f}× | "
            f"{above_floor(row, 'limit_cold'):.1f}× |"
        )
        if row["images"] == 1:
            cells = [f"{row[c]['p99_ms']:.2f}" for c in columns[4:]]
            lines.append(f"| {kind}, p99 ms | | | | | {' | '.join(cells)} | | | |")
        else:
            cells = [f"{row[c]['images_per_s']:,.0f}" for c in columns]
            lines.append(f"| {kind}, images/s | {' | '.join(cells)} | | | |")
    for limit, words in (("limit", "the forward pass"), ("limit_cold", "the cold forward pass")):
        met = [kind for kind, row in result["rows"].items() if above_floor(row, limit) <= TARGET]
        missed = [kind for kind in result["rows"] if kind not in met]
        lines += [
            "",
            f"At most {TARGET:g}× {words} above the floor: met for "
            f"{', '.join(met) or 'none'}; not for {', '.join(missed) or 'none'}.",
        ]
    load = result["load_test"]
    machine = result["machine"]
    cost = [
        f"{row['recording']['p50_ms'] - row['champion']['p50_ms']:+.2f} ms for {kind}"
        for kind, row in result["rows"].items()
    ]
    lines += [
        "",
        "The champion above does not record; recording each answer "
        "(pipeline/serving/records.py, to a local folder) "
        f"changes the p50 by {', '.join(cost)}.",
        "",
        f"Load test (locust, {load['users']} users for {load['seconds']} s, one-image requests "
        f"with one picture request in ten, one server worker, recording): {load['requests']:,} "
        f"requests, {load['failures']} failures, {load['recorded']:,} records, p50 "
        f"{load['p50_ms']:.0f} ms, p99 {load['p99_ms']:.0f} ms, {load['requests_per_s']:.0f} "
        "requests/s.",
        "",
        f"Measured by `{result['command']}` on {machine['cpu_type']}, one thread per process, "
        f"torch {machine['torch']}, {result['finished']}, commit {result['commit'][:7]}; "
        f"reports/{result_name(result['quick'])}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, 10 s load test")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    result = measure(args.quick)
    atomic.write_json(REPO / "reports" / result_name(args.quick), result)
    table = markdown_table(result)
    print(table)
    if not args.quick:
        text = PAGE.read_text()
        start, end = text.find(TABLE_START), text.find(TABLE_END)
        if start < 0 or end < start:
            raise SystemExit(f"error: {PAGE} lacks the {TABLE_START} ... {TABLE_END} markers")
        atomic.write_text(PAGE, text[: start + len(TABLE_START)] + "\n" + table + "\n" + text[end:])
    benchmarks = REPO / "reports" / ("benchmarks-quick.json" if args.quick else "benchmarks.json")
    if benchmarks.exists():
        atomic.write_json(benchmarks, {**json.loads(benchmarks.read_text()), "serving": result})
    return result


if __name__ == "__main__":
    main()
