"""The processes solo starts: every one that may compile a DeepSpeed op runs this environment's ninja (a
system ninja older than 1.12 and pip's newer one each take the other's build log as stale and rebuild the
op), and a private Ray is started on a busy machine or beside another Ray without surprises."""

import os
import shutil
import sys
from pathlib import Path

import pytest

from solo import runtime
from solo.errors import SoloError
from solo.runtime import path_with_this_environment_first, use_this_environments_ninja

BIN = str(Path(sys.executable).parent)


def test_this_environments_bin_comes_first_and_only_once():
    path = path_with_this_environment_first("/usr/bin:/bin")
    assert path == f"{BIN}{os.pathsep}/usr/bin:/bin"
    assert path_with_this_environment_first(path) == path


def test_op_builds_find_this_environments_ninja_whatever_path_the_process_had(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    use_this_environments_ninja()
    # What torch.utils.cpp_extension runs to build an op: `ninja`, looked up on PATH.
    assert shutil.which("ninja") == str(Path(BIN) / "ninja")  # pip's, a DeepSpeed dependency


def test_the_runtime_env_file_for_plain_ray_job_submit_sets_what_solo_submit_does():
    import yaml

    from solo.config import REPO_ROOT
    from solo.runtime import worker_env

    written = yaml.safe_load((REPO_ROOT / "cluster" / "runtime_env.yaml").read_text())["env_vars"]
    # Paths and the accelerator differ by machine: `solo up` and cluster/join.sh set those.
    machine_specific = {"SOLO_CHECKOUT", "TORCH_EXTENSIONS_DIR", "SOLO_HOME", "DS_ACCELERATOR"}
    assert written == {key: value for key, value in worker_env().items() if key not in machine_specific}


def test_a_private_ray_that_does_not_start_in_time_is_tried_again_then_one_clear_line(monkeypatch):
    """Ray's own 30 s wait for its node is not a setting: on a busy machine solo tries again, then says so."""
    tries, inherited = [], []

    def slow_node(**kwargs):
        tries.append(kwargs)
        inherited.append((os.environ["RAY_ADDRESS"], os.environ["RAY_GCS_SERVER_PORT"]))
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(runtime.ray, "init", slow_node)
    monkeypatch.setattr(runtime.ray, "shutdown", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SoloError, match=r"did not start on this machine in 3 tries of 30 s: the machine is too busy"):
        runtime.start_private_ray(2, {"A": "1"})
    assert len(tries) == runtime.RAY_START_TRIES
    # Each try pins a GCS port, and the cluster's processes (and its workers' env) are told that address...
    for kwargs, (address, port) in zip(tries, inherited):
        assert kwargs["address"] == "local" and address.endswith(f":{port}")
        assert kwargs["runtime_env"]["env_vars"] == {"A": "1", "RAY_ADDRESS": address}
    # ...while this process keeps what it had.
    assert "RAY_ADDRESS" not in os.environ and "RAY_GCS_SERVER_PORT" not in os.environ

    calls = []
    monkeypatch.setattr(runtime.ray, "init", lambda **kwargs: calls.append(kwargs))
    runtime.start_private_ray(None, {})
    assert len(calls) == 1, "a node that starts is not started again"
