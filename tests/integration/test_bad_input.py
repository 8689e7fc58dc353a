"""Bad input gets one clear line saying what to do, exit code 2, and no traceback."""

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from solo.config import REPO_ROOT
from tests.families import DROPS_EARLIER_REASONING

BIN = Path(sys.executable).parent


def run(args, tmp_path, timeout=120):
    env = {**os.environ, "SOLO_HOME": str(tmp_path / "home")}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(args, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def assert_one_clear_line(done, *needles):
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("solo: "), done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0]


def assert_ends_in_one_clear_line(done, *needles):
    """Once Ray has started, its own log lines come first on stderr: the error is still one line, the last."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Error:" not in done.stderr.replace("solo: ", "")
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("solo: "), done.stderr
    for needle in needles:
        assert needle in last


def test_unknown_config_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: x\npretrain:\n  max_stepz: 3\n")
    done = run([sys.executable, "-m", "jobs.pipeline", "--config", str(bad)], tmp_path)
    assert_one_clear_line(done, str(bad), "pretrain.max_stepz", "Extra inputs are not permitted")


def test_bad_override_value(tmp_path):
    done = run([sys.executable, "-m", "jobs.pipeline", "--set", "pretrain.workers=zero"], tmp_path)
    assert_one_clear_line(done, "pretrain.workers")


def test_missing_input_path(tmp_path):
    done = run([sys.executable, "-m", "jobs.pipeline", "--input", str(tmp_path / "nowhere")], tmp_path)
    assert_one_clear_line(done, "nowhere", "does not exist")
    assert not (tmp_path / "home" / "runs" / "demo" / "data").exists()


def test_submit_with_no_cluster_up(tmp_path):
    done = run([BIN / "solo", "submit", "pipeline", "--config", "configs/pipelines/demo.yaml"], tmp_path)
    assert_one_clear_line(done, "no Ray cluster is up", "solo up")


def test_status_with_no_cluster_up(tmp_path):
    assert_one_clear_line(run([BIN / "solo", "status"], tmp_path), "solo up")


def test_serve_a_model_that_is_not_there(tmp_path):
    done = run([BIN / "solo", "serve", "--model", str(tmp_path / "missing")], tmp_path)
    assert_one_clear_line(done, "missing")


def test_serve_on_a_port_in_use(tmp_path, tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run([BIN / "solo", "serve", "--model", str(tiny_model_dir), "--port", str(port)], tmp_path)
    assert_one_clear_line(done, str(port), "in use", "--port")


def test_an_empty_input_is_refused_before_ray_starts(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    done = run([sys.executable, "-m", "jobs.data", "--input", str(tmp_path / "empty.jsonl"),
                "--output", str(tmp_path / "out")], tmp_path)
    assert_one_clear_line(done, "empty.jsonl", "holds no documents")
    assert not (tmp_path / "out").exists()


def test_a_parquet_file_without_the_text_column_names_the_columns_it_has(tmp_path):
    pq.write_table(pa.table({"body": ["a"], "url": ["u"]}), tmp_path / "pages.parquet")
    done = run([sys.executable, "-m", "jobs.pipeline", "--input", str(tmp_path / "pages.parquet")], tmp_path)
    assert_one_clear_line(done, "pages.parquet", "no column 'text'", "body, url", "text_field")


def test_an_input_none_of_which_can_be_read_is_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n' * 1000)[:20])
    done = run([sys.executable, "-m", "jobs.data", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")],
               tmp_path, timeout=300)
    assert_ends_in_one_clear_line(done, "no input could be read", "a.jsonl.gz", "truncated")


def test_finetune_refuses_a_template_it_cannot_mask_in_one_line(families, tmp_path):
    """A template that rewrites earlier turns yields no assistant mask: one line naming the model and the way out
    (`--set loss_on=all`), exit 2, and nothing retried."""
    folder = tmp_path / "reasoning"
    shutil.copytree(families["hermes"].folder, folder)
    (folder / "chat_template.jinja").write_text(DROPS_EARLIER_REASONING)
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "2+2?"},
                                             {"role": "assistant", "content": "<think>easy</think>4"},
                                             {"role": "user", "content": "3+3?"},
                                             {"role": "assistant", "content": "6"}]}) + "\n")
    done = run([sys.executable, "-m", "jobs.finetune", "--model", str(folder), "--data", str(data), "--output",
                str(tmp_path / "out"), "--set", "method=qlora"], tmp_path, timeout=300)
    assert_ends_in_one_clear_line(done, f"{folder}'s chat template cannot mark the assistant's tokens",
                                  "--set loss_on=all")
