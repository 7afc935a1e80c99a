"""The seed's kiosk load: each kiosk belongs to one of 5 restaurants and classifies one vector.

Run by ``python -m bench.kiosk.run``; alone:
``locust -f bench/kiosk/locustfile.py -H http://127.0.0.1:8000 -u 250 -r 10 -t 180s --headless``.
Set ``KIOSK_CHECK_LABELS=0`` for servers that do not compute (the ceiling).
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task

from bench.kiosk.scenario import HIGH, LOW, answer_key, training_sets

TRAINING = training_sets()
ANSWERS = [answer_key(training) for training in TRAINING]
CHECK_LABELS = os.environ.get("KIOSK_CHECK_LABELS", "1") == "1"


class Kiosk(HttpUser):
    """One checkout kiosk: GET /classify with a JSON body, 10–20 ms between requests."""

    wait_time = between(0.01, 0.02)

    def on_start(self) -> None:
        self.restaurant = random.randrange(len(TRAINING))

    @task
    def classify(self) -> None:
        query = [random.randrange(LOW, HIGH), random.randrange(LOW, HIGH)]
        body = {
            "training_data": {"training_data": TRAINING[self.restaurant]},
            "query_input": {"query_input": query},
        }
        with self.client.get(
            "/classify", json=body, name="/classify", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
            elif CHECK_LABELS:
                labels = response.json().get("classification_result")
                if labels != [ANSWERS[self.restaurant][(query[0], query[1])]]:
                    response.failure(f"wrong label {labels} for {query}")
