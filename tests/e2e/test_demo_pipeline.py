"""The demo, end to end, at its smallest size, on a real local Ray cluster started by `solo up`:
`solo submit pipeline`, the plain `ray job submit` line, a changed setting rerunning only the
stages it affects, and the exported model answering the official `openai` client."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

from solo.config import REPO_ROOT
from solo.pipeline import STAGES
from solo.runtime import free_port
from solo.serving.run import wait_until_healthy

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
CONFIG = "configs/pipelines/demo.yaml"
# Validation and checkpoints only at the last step (resuming is tests/integration's); 8 questions per
# benchmark show the files are found and scored.
SMALLEST = [
    "data.inputs=[{path: embedded, domain: python-docs, max_documents: 150}]",
    "pretrain.max_steps=6", "pretrain.log_every=3", "pretrain.eval_every=6", "pretrain.checkpoint_every=6",
    "finetune.max_steps=4", "finetune.log_every=2", "finetune.eval_every=4", "finetune.checkpoint_every=4",
    "finetune.max_examples=300", "evaluate.max_documents=4", "evaluate.max_new_tokens=8", "evaluate.max_questions=8",
]


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def run(args, env, timeout=900):
    done = subprocess.run(args, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("solo_home")
    env = {**os.environ, "SOLO_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    run([BIN / "solo", "up", "--num-cpus", "2", "--port", str(free_port()), "--dashboard-port", str(dashboard)], env)
    try:
        yield {"env": env, "home": home, "dashboard": dashboard}
    finally:
        run([BIN / "solo", "down"], env, timeout=120)  # a cluster left running is a test error


@pytest.fixture(scope="module")
def first_run(cluster):
    out = run([BIN / "solo", "submit", "pipeline", "--config", CONFIG, *sets(SMALLEST), "--wait"], cluster["env"])
    return out


def manifest(cluster, stage):
    return json.loads((cluster["home"] / "runs" / "demo" / stage / "manifest.json").read_text())


def test_solo_submit_runs_the_pipeline_to_the_end(cluster, first_run):
    submission_id = first_run.splitlines()[0]
    assert submission_id.startswith("raysubmit_")
    for stage in STAGES:
        assert f"✓ {stage.name}" in first_run
        assert manifest(cluster, stage.name)["status"] == "complete"
    pretrain = manifest(cluster, "pretrain")
    assert pretrain["metrics"]["step"] == 6 and pretrain["metrics"]["loss"] < 8.5
    evaluation = manifest(cluster, "evaluate")["metrics"]
    assert 0 < evaluation["pretrain_bits_per_byte"] < 8  # better than a uniform guess over bytes
    # The benchmark files are found from inside the job (which runs from Ray's copy of the repo).
    assert 0 <= evaluation["mmlu_accuracy"] <= 1 and 0 <= evaluation["arc_challenge_accuracy"] <= 1
    status = subprocess.run([BIN / "solo", "status"], env=cluster["env"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert submission_id in status.stdout and "SUCCEEDED" in status.stdout
    assert (cluster["home"] / "runs" / "demo" / "report" / "report.md").is_file()
    assert "report card:" in first_run
    logs = run([BIN / "solo", "logs", submission_id], cluster["env"])
    assert "✓ export" in logs and "model ready" in logs


def test_export_is_a_hugging_face_model_with_its_chat_template(cluster, first_run):
    folder = cluster["home"] / "runs" / "demo" / "export" / "demo"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True) == "<|user|>hi<|end|><|assistant|>"


def test_plain_ray_job_submit_runs_it_again_skipping_every_finished_stage(cluster, first_run):
    env = {**cluster["env"], "RAY_AUTH_MODE": "token", "RAY_ADDRESS": f"http://127.0.0.1:{cluster['dashboard']}"}
    out = run([BIN / "ray", "job", "submit", "--working-dir", ".", "--", "python", "-m", "jobs.pipeline",
               "--config", CONFIG, *sets(SMALLEST)], env)
    for stage in STAGES:
        assert f"↷ {stage.name}: up to date" in out
    assert "model ready" in out


def test_solo_demo_skips_what_is_trained_then_serves_and_answers(cluster, first_run):
    out = run([BIN / "solo", "demo", "--port", str(free_port()), *sets(SMALLEST)], cluster["env"])
    for stage in STAGES:
        assert f"↷ {stage.name}: up to date" in out
    assert "Q: What does the function json.dumps do?" in out
    assert "\nA: " in out and "curl http://127.0.0.1:" in out
    assert json.loads((cluster["home"] / "cluster.json").read_text())  # a cluster it did not start stays up


def test_a_changed_setting_reruns_that_stage_and_those_after_it(cluster, first_run):
    """Switching the fine-tune to QLoRA reruns it on the cluster, registers the adapter, and the
    merged model is what evaluate and export (and then `solo serve`) take."""
    before = manifest(cluster, "pretrain")["finished_at"]
    changed = [o for o in SMALLEST if not o.startswith("finetune.max_steps")] + [
        "finetune.max_steps=2", "finetune.method=qlora"]
    out = run([BIN / "solo", "submit", "pipeline", "--config", CONFIG, *sets(changed), "--wait"], cluster["env"])
    for stage in ("data", "tokenizer", "tokenize", "pretrain"):
        assert f"↷ {stage}: up to date" in out
    for stage in ("finetune", "evaluate", "export"):
        assert f"✓ {stage}" in out
    assert manifest(cluster, "pretrain")["finished_at"] == before
    metrics = manifest(cluster, "finetune")["metrics"]
    assert metrics["step"] == 2 and metrics["host_peak_gb"] > 0
    assert (cluster["home"] / "adapters" / metrics["adapter"] / "adapter_config.json").is_file()


def test_solo_serve_answers_the_openai_client_and_stops_on_sigint(cluster, first_run):
    port = free_port()
    server = subprocess.Popen([BIN / "solo", "serve", "--model", "demo", "--port", str(port)], env=cluster["env"],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", timeout_s=240, server=server)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        assert [m.id for m in client.models.list().data] == ["demo"]
        question = [{"role": "user", "content": "What does json.dumps do?"}]
        reply = client.chat.completions.create(model="demo", max_tokens=8, temperature=0, messages=question)
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="demo", max_tokens=8, temperature=0, messages=question, stream=True) if chunk.choices)
        assert streamed == reply.choices[0].message.content
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=120)
    assert server.returncode == 0, output[-3000:]
    assert "solo: stopped" in output
