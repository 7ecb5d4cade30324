"""The load test of benchmarks/serving.py: each user posts one-image requests to the served
champion, and one picture request for every nine of them. $SERVING_BODIES names the JSON file of
request bodies that benchmarks/serving.py writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from locust import HttpUser, task

BODIES = json.loads(Path(os.environ["SERVING_BODIES"]).read_text())
HEADERS = {"Content-Type": "application/json"}


class Client(HttpUser):
    @task(9)
    def one_image(self) -> None:
        self.client.post("/invocations", json=BODIES["1 image"], headers=HEADERS, name="1 image")

    @task(1)
    def one_picture(self) -> None:
        self.client.post(
            "/invocations", json=BODIES["1 picture"], headers=HEADERS, name="1 picture"
        )
