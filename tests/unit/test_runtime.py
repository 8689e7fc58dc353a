"""Every process that may compile a DeepSpeed op runs this environment's ninja: a system ninja older
than 1.12 and pip's newer one each take the other's build log as stale and rebuild the op."""

import os
import shutil
import sys
from pathlib import Path

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
