"""What tests of a running `solo serve` read from it over HTTP: its Prometheus samples."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def metrics_text(base_url: str, key: str | None = None) -> str:
    """`/metrics` of the server whose OpenAI base URL (…/v1) is `base_url`."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"{base_url.removesuffix('/v1')}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


def samples(text: str) -> list[Sample]:
    """Every sample of a `/metrics` exposition, as Prometheus parses it."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def scrape(base_url: str, sample: str, model: str, key: str | None = None) -> float:
    """The value of one of `/metrics`' samples of `model`, such as `solo_requests_in_flight`."""
    (value,) = [s.value for s in samples(metrics_text(base_url, key)) if s.name == sample
                and s.labels == {"model_name": model}]
    return value


def frees_its_slots(base_url: str, model: str, key: str | None = None, within_s: float = 60.0) -> bool:
    """Whether, within `within_s`, `model` holds no admission at the gateway and no slot in its
    replica: what a generation that ended, or was cut, must give back."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if (scrape(base_url, "solo_requests_in_flight", model, key) == 0
                and scrape(base_url, "vllm:num_requests_running", model, key) == 0):
            return True
        time.sleep(0.1)
    return False
