"""Several models, adapters and replicas: the serve config, the plan built from it (engines,
adapters from the artifact store, Ray Serve deployment options) and the gateway's routing by
`model`, over scripted fake engines. Ray Serve itself is exercised in tests/integration."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from solo.cli.main import parse_args
from solo.cli.serve import serve_config
from solo.errors import SoloError
from solo.runtime import free_port
from solo.serving import deployment as planning
from solo.serving.config import ServeConfig, ServedModelConfig
from solo.serving.deployment import deployment_options, pick_engine, plan_models, replica_cpus_needed
from solo.serving.http.app import build_gateway
from solo.serving.http.service import ServedModel
from solo.serving.run import check_resources, wait_until_healthy
from solo.serving.vllm_engine import max_lora_rank, to_delta
from tests.api import USER
from tests.fakes import FakeEngine
from tests.served import samples


def model_folder(root: Path, name: str) -> Path:
    """What `plan_models` checks a model folder for; the weights are never read here."""
    folder = root / name
    folder.mkdir(parents=True)
    for file in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / file).write_text("{}")
    return folder


def register(home: Path, name: str, base: Path, rank: int = 8) -> None:
    folder = home / "adapters" / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank}))
    (folder / "adapter.json").write_text(json.dumps(
        {"name": name, "base_model": str(base), "method": "lora", "created_at": 0.0}))


# ---------------------------------------------------------------- config


def test_one_model_or_a_list_of_models():
    assert [(m.path, m.name) for m in ServeConfig(model="/m", name="a").served_models()] == [("/m", "a")]
    config = ServeConfig(models=[{"path": "/a"}, {"path": "/b", "name": "b", "engine": "cpu", "replicas": 2}])
    assert [(m.path, m.name, m.engine, m.replicas) for m in config.served_models()] == [
        ("/a", None, None, 1), ("/b", "b", "cpu", 2)]
    assert ServeConfig().served_models() == []
    # Each model's tool-call markup, by vLLM's parser names; unset: told from its chat template.
    config = ServeConfig(models=[{"path": "/a", "tool_parser": "mistral"}, {"path": "/b"}])
    assert [m.tool_parser for m in config.served_models()] == ["mistral", None]
    assert ServeConfig(model="/m", tool_parser="llama3_json").served_models()[0].tool_parser == "llama3_json"


@pytest.mark.parametrize("settings, message", [
    ({"model": "/a", "models": [{"path": "/b"}]}, "set model .* or models, not both"),
    ({"models": [{"path": "/a", "name": "x"}, {"path": "/b", "name": "x"}]}, "two models are named 'x'"),
    ({"models": [{"path": "/a", "replicas": 2, "autoscaling": {"max_replicas": 3}}]}, "replicas or autoscaling"),
    ({"models": [{"path": "/a", "autoscaling": {"min_replicas": 3, "max_replicas": 2}}]}, "above max_replicas"),
    ({"models": [{"path": "/a", "num_gpus": 1.5}]}, "whole GPUs"),
    ({"models": [{"path": "/a", "num_gpus": -1}]}, "greater than or equal to 0"),
    ({"engine": "tpu"}, "'auto', 'cpu' or 'vllm'"),
    ({"models": [{"path": "/a", "tool_parser": "pythonic"}]}, "'hermes', 'llama3_json', 'mistral' or 'solo'"),
    ({"tool_parser": "hermes", "models": [{"path": "/b"}]}, "set model .* or models, not both"),
])
def test_bad_serve_settings_are_refused(settings, message):
    with pytest.raises(ValidationError, match=message):
        ServeConfig(**settings)


def test_the_cli_takes_several_models(tmp_path):
    a, b = model_folder(tmp_path, "a"), model_folder(tmp_path, "b")
    config = serve_config(parse_args(["serve", "--model", str(a), "--model", str(b)]))
    assert config.model is None and [m.path for m in config.served_models()] == [str(a), str(b)]
    config = serve_config(parse_args(["serve", "--model", str(a), "--name", "mine"]))
    assert [(m.path, m.name) for m in config.served_models()] == [(str(a), "mine")]
    with pytest.raises(SoloError, match="--name names one model"):
        serve_config(parse_args(["serve", "--model", str(a), "--model", str(b), "--name", "x"]))


# ---------------------------------------------------------------- engines


def test_auto_picks_vllm_only_with_a_cuda_gpu_and_vllm(monkeypatch):
    assert pick_engine("cpu") == "cpu" and pick_engine("vllm") == "vllm", "an engine asked for is taken as is"
    real_find_spec = importlib.util.find_spec
    installed = {"vllm": False}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if installed[name] else None) if name == "vllm"
                        else real_find_spec(name, *a))
    gpu = {"cuda": True}
    platform = SimpleNamespace(is_cuda=lambda: gpu["cuda"], is_cpu=lambda: False)  # vLLM's CUDA build
    assert pick_engine("auto") == "cpu", "a GPU without vLLM"
    installed["vllm"] = True
    monkeypatch.setitem(sys.modules, "vllm", None)  # found, but its import fails (a broken install)
    assert pick_engine("auto") == "cpu"
    # Only what vLLM says of this machine is at stake here.
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm.platforms", SimpleNamespace(current_platform=platform))
    assert pick_engine("auto") == "vllm"
    gpu["cuda"] = False
    assert pick_engine("auto") == "cpu", "vLLM without a GPU"


def test_vllm_outputs_map_to_deltas_with_the_top_alternatives_by_rank():
    """Our mapping of vLLM's documented output shape (CompletionOutput, Logprob); vLLM itself runs
    in tests/gpu."""
    lp = lambda value, rank: SimpleNamespace(logprob=value, rank=rank)  # noqa: E731
    completion = SimpleNamespace(token_ids=[7, 9], finish_reason="length", logprobs=[
        {7: lp(-0.1, 1), 3: lp(-2.5, 2)},
        {9: lp(-3.0, 4), 1: lp(-0.5, 1), 2: lp(-1.0, 2)},  # the sampled token, outside the top 2
    ])
    delta = to_delta(completion, wanted_logprobs=2)
    assert delta.token_ids == [7, 9] and delta.finish_reason == "length"
    assert [(e.token_id, e.logprob, e.top) for e in delta.logprobs] == [
        (7, -0.1, [(7, -0.1), (3, -2.5)]), (9, -3.0, [(1, -0.5), (2, -1.0)])]
    assert to_delta(completion, None).logprobs is None
    with pytest.raises(RuntimeError, match="abort"):
        to_delta(SimpleNamespace(token_ids=[], finish_reason="abort", logprobs=None), None)
    assert [max_lora_rank(r) for r in ([4], [8, 16], [17], [])] == [8, 16, 32, 8]


# ---------------------------------------------------------------- the plan


def test_the_plan_names_models_and_finds_their_adapters(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("SOLO_HOME", str(home))
    base, other = model_folder(tmp_path, "base"), model_folder(tmp_path, "other")
    register(home, "chat", base, rank=16)
    register(home, "elsewhere", tmp_path / "not-served")
    register(home, "other", base)  # a served model's name: skipped
    (home / "adapters" / "broken").mkdir()
    (home / "adapters" / "broken" / "adapter.json").write_text("{not json")  # skipped, not fatal
    plans = plan_models(ServeConfig(models=[{"path": str(base)}, {"path": str(other), "engine": "cpu"}]))
    assert [(p.name, p.engine) for p in plans] == [("base", "cpu"), ("other", "cpu")]
    assert [(a.name, a.rank) for a in plans[0].adapters] == [("chat", 16)] and plans[1].adapters == ()
    assert plans[0].deployment_name(0) == "LLMServer-0-base"
    with pytest.raises(SoloError, match="two models would be served as 'base'"):
        plan_models(ServeConfig(models=[{"path": str(base)}, {"path": str(base)}]))
    with pytest.raises(SoloError, match="does not exist"):
        plan_models(ServeConfig(model=str(tmp_path / "nothing")))
    with pytest.raises(SoloError, match="which model"):
        plan_models(ServeConfig())


def plan_of(engine: str = "cpu", **settings) -> planning.ModelPlan:
    return planning.ModelPlan("m", "/m", engine, ServedModelConfig(path="/m", **settings))


def test_deployment_options_map_replicas_autoscaling_and_gpus():
    config = ServeConfig(replica_cpus=2, max_queue=100)
    fixed = deployment_options(plan_of(replicas=3), config)
    assert fixed == {"num_replicas": 3, "max_ongoing_requests": 100, "ray_actor_options": {
        "num_cpus": 2, "runtime_env": {"env_vars": {"RAY_worker_niceness": "0"}}}}
    scaled = deployment_options(plan_of(autoscaling={"min_replicas": 0, "max_replicas": 4,
                                                     "target_ongoing_requests": 8}), config)
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {"min_replicas": 0, "initial_replicas": 1, "max_replicas": 4,
                                            "target_ongoing_requests": 8}
    # A GPU model asks Serve for a share of a GPU per replica, so replicas land wherever GPUs are free.
    assert deployment_options(plan_of("vllm", num_gpus=0.5, replicas=2), config)["ray_actor_options"] == {
        "num_cpus": 1, "num_gpus": 0.5}
    # num_gpus 0: vLLM's CPU build, which takes the replica's cores as our CPU engine does.
    assert deployment_options(plan_of("vllm", num_gpus=0), config)["ray_actor_options"] == fixed["ray_actor_options"]
    assert ServedModelConfig(path="/m", num_gpus=2).tensor_parallel_size() == 2
    assert ServedModelConfig(path="/m", num_gpus=0.25).tensor_parallel_size() == 1


def test_a_vllm_replica_takes_its_share_of_gpu_memory_or_a_quarter_of_ram_on_vllms_cpu_build(monkeypatch):
    built = {}
    monkeypatch.setattr(planning, "VllmEngine", lambda folder, **settings: built.setdefault(folder, settings))
    planning.build_engine(planning.ModelPlan("m", "/half", "vllm", ServedModelConfig(path="/half", num_gpus=0.5)), 16)
    planning.build_engine(planning.ModelPlan("m", "/two", "vllm", ServedModelConfig(path="/two", num_gpus=2)), 16)
    planning.build_engine(planning.ModelPlan("m", "/cpu", "vllm", ServedModelConfig(path="/cpu", num_gpus=0)), 16)
    assert {folder: (s["gpu_memory_utilization"], s["tensor_parallel_size"]) for folder, s in built.items()} == {
        "/half": (0.45, 1), "/two": (0.9, 2), "/cpu": (planning.CPU_MEMORY_SHARE, 1)}


def test_resources_are_checked_before_serve_waits_for_them_forever():
    config = ServeConfig(replica_cpus=1)
    plans = [plan_of(replicas=2), plan_of("vllm", num_gpus=1)]
    assert replica_cpus_needed(plans, config) == 3
    check_resources(plans, config, {"CPU": 3}, {"CPU": 3, "GPU": 1})
    with pytest.raises(SoloError, match="has 2 free CPUs and the model replicas need 3"):
        check_resources(plans, config, {"CPU": 2}, {"CPU": 2, "GPU": 1})
    with pytest.raises(SoloError, match="1 GPUs a replica and the Ray cluster has 0"):
        check_resources(plans, config, {"CPU": 3}, {"CPU": 3})
    check_resources([plan_of("vllm", num_gpus=0)], config, {"CPU": 1}, {"CPU": 1})  # vLLM's CPU build


def test_waiting_for_a_server_ends_when_its_process_exits():
    root = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    # Not the timeout's error, which would say it "did not answer within 3600s".
    with pytest.raises(SoloError, match=f"exited with code 3 before it answered on {root}/health"):
        wait_until_healthy(root, timeout_s=3600, server=server)


# ---------------------------------------------------------------- the gateway over several models


def test_the_gateway_routes_by_model_and_lists_adapters_with_their_parent(tokenizer):
    scripts = {name: FakeEngine(tokenizer.encode(text, add_special_tokens=False))
               for name, text in [("a", " from a"), ("b", " from b"), ("a-lora", " from the adapter")]}
    app = build_gateway([ServedModel("a", scripts["a"], tokenizer), ServedModel("b", scripts["b"], tokenizer),
                                ServedModel("a-lora", scripts["a-lora"], tokenizer, parent="a")], max_new_tokens=8)
    client = TestClient(app, raise_server_exceptions=False)
    cards = client.get("/v1/models").json()["data"]
    assert [(c["id"], c["parent"]) for c in cards] == [("a", None), ("b", None), ("a-lora", "a")]
    for name, engine in scripts.items():
        body = client.post("/v1/chat/completions", json={"model": name, "messages": USER, "max_tokens": 20}).json()
        assert body["model"] == name and body["choices"][0]["message"]["content"] == tokenizer.decode(engine.script)
        assert len(engine.calls) == 1, "each request reached its own model's engine"
        text = client.post("/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 20}).json()
        assert text["choices"][0]["text"] == tokenizer.decode(engine.script) and len(engine.calls) == 2
    missing = client.post("/v1/chat/completions", json={"model": "c", "messages": USER})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples(client.get("/metrics").text)}
    for name in scripts:
        assert metrics["solo_requests_total", (("endpoint", "/v1/chat/completions"), ("model_name", name),
                                               ("status", "200"))] == 1
        assert metrics["solo_requests_in_flight", (("model_name", name),)] == 0
        assert metrics["vllm:generation_tokens_total", (("model_name", name),)] == 2 * len(scripts[name].script)
    assert metrics["solo_requests_total", (("endpoint", "/v1/chat/completions"), ("model_name", ""),
                                           ("status", "404"))] == 1
    assert ("vllm:num_requests_waiting", (("model_name", "a"),)) in metrics
    assert ("vllm:num_requests_waiting", (("model_name", "a-lora"),)) not in metrics, \
        "an adapter runs on its base's engine"
    with pytest.raises(ValueError, match="distinct names"):
        build_gateway([ServedModel("a", scripts["a"], tokenizer)] * 2, max_new_tokens=8)


# ---------------------------------------------------------------- adapters on the CPU engine


def test_a_cpu_adapter_engine_is_the_merged_model_and_stops_when_retired(tiny_model_dir, tiny_lora):
    import asyncio

    from solo.serving.cpu_engine import CpuEngine
    from solo.serving.engine import SamplingParams

    prompt_ids, expected = tiny_lora.prompt_ids, tiny_lora.expected
    base = CpuEngine(tiny_model_dir, max_concurrent=2, threads=1)
    tuned = base.with_adapter("x", str(tiny_lora.folder))

    async def run():
        greedy = SamplingParams(max_tokens=12, temperature=0)
        outputs = [[t async for d in engine.generate(prompt_ids, greedy) for t in d.token_ids]
                   for engine in (base, tuned)]
        tuned.retire()
        for _ in range(5):
            await asyncio.sleep(0)
        return outputs, tuned._scheduler.done(), base._scheduler.done()

    (from_base, from_tuned), tuned_stopped, base_stopped = asyncio.run(run())
    assert from_tuned == expected and from_tuned != from_base
    assert base.model.model.layers[0].self_attn.q_proj.weight.data_ptr() != \
        tuned.model.model.layers[0].self_attn.q_proj.weight.data_ptr(), "the base's weights stay its own"
    assert tuned_stopped and not base_stopped, "a retired engine's scheduler ends once idle"
