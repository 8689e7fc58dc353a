"""The `solo` command: a local Ray cluster, jobs on it, and serving.

    solo up [--num-cpus N] [--num-gpus N]     start a Ray head here (dashboard on 127.0.0.1, token auth on)
    solo down                                 stop it
    solo submit JOB [--config FILE] [--set key=value ...] [--wait]
                                              run python -m jobs.JOB on the cluster; prints the submission id
    solo status                               the cluster's resources and its jobs
    solo logs ID [--follow]                   a job's output
    solo serve --model PATH_OR_RUN [--model …] [--port N]
                                              an OpenAI-compatible endpoint, in the foreground
    solo report RUN [--config FILE]           the run's report card: report.md and plots
    solo demo                                 the whole promise: train the demo model, serve it, ask it something
    solo plan [--preset P --gpu-mem GB --host-mem GB [--nvme GB] [--gpus N]]
                                              will it fit? memory and tokens/s of every strategy, and the pick
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

from solo.config import REPO_ROOT, load_config
from solo.serving.config import ServeConfig
from solo.train.config import TrainConfig
from solo.cli.jobs import main_guard
from solo.errors import SoloError
from solo.train.planner import DEFAULT_GPU, HOST_CORES, PCIE_GBPS
from solo.runtime import cluster_file, free_port, path_with_this_environment_first, worker_env
from solo.store import RunStore, solo_home
from solo.train.loop import PEAK_TFLOPS

DASHBOARD_PORT = 8265


def available_jobs() -> list[str]:
    """The entry points in jobs/: what `python -m jobs.<name>` can run."""
    return sorted(p.stem for p in (REPO_ROOT / "jobs").glob("*.py") if not p.stem.startswith("_"))


def _ray_env() -> dict[str, str]:
    """The environment of `ray` commands and of every process the cluster starts."""
    env = dict(os.environ)
    env.update(worker_env())
    env["RAY_AUTH_MODE"] = "token"
    # Jobs run `python`: make it this environment's, whatever PATH the caller had.
    env["PATH"] = path_with_this_environment_first(env.get("PATH", ""))
    return env


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


def _cluster() -> dict:
    if not cluster_file().is_file():
        raise SoloError("no Ray cluster is up: start one with `solo up`")
    return json.loads(cluster_file().read_text())


def _job_client():
    from ray.job_submission import JobSubmissionClient

    cluster = _cluster()
    try:
        return JobSubmissionClient(cluster["dashboard"])
    except (ConnectionError, RuntimeError) as error:
        raise SoloError(f"the Ray cluster at {cluster['dashboard']} does not answer ({str(error).splitlines()[0]}): "
                        f"run `solo down` then `solo up`") from None


# ---------------------------------------------------------------- cluster


def up(num_cpus: int | None, num_gpus: int | None, port: int, dashboard_port: int) -> dict:
    """Start a Ray head as its own process group, so `down` can stop exactly it and nothing else."""
    if cluster_file().is_file():
        cluster = json.loads(cluster_file().read_text())
        print(f"a Ray cluster is already up: {cluster['address']} (dashboard {cluster['dashboard']})")
        return cluster
    # The job agent's HTTP port is fixed by default (52365): any other Ray on this machine would
    # hold it, and jobs could never be submitted. A free one avoids that.
    command = [_ray_cli(), "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={free_port()}",
               "--disable-usage-stats"]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        command.append(f"--num-gpus={num_gpus}")
    log_path = solo_home() / "cluster.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        # `solo down` stops the whole cluster: Ray's default 30 s wait for the node to drain buys nothing.
        env = {**_ray_env(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5"}
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log_path.read_text():
        if head.poll() is not None or time.monotonic() > deadline:
            lines = [line for line in log_path.read_text().splitlines() if line.strip()]
            _stop_group(head.pid)
            raise SoloError(f"`ray start` failed: {lines[-1] if lines else 'no output'} (full log: {log_path})")
        time.sleep(0.5)
    import ray._private.services as services

    cluster = {"address": f"{services.get_node_ip_address()}:{port}", "pid": head.pid,
               "dashboard": f"http://127.0.0.1:{dashboard_port}", "started_at": time.time(), "log": str(log_path)}
    cluster_file().write_text(json.dumps(cluster, indent=2) + "\n")
    print(f"Ray head up: {cluster['address']}; dashboard {cluster['dashboard']} (token auth on; "
          f"token in ~/.ray/auth_token)\nsubmit:  solo submit pipeline --config configs/pipelines/demo.yaml\n"
          f"join:    cluster/join.sh {cluster['address']}   (on another machine)\nstop:    solo down")
    return cluster


def _group_alive(pgid: int) -> bool:
    try:
        os.waitpid(pgid, os.WNOHANG)  # reap the head if this process started it (`solo demo`): no zombie
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop_group(pgid: int) -> None:
    """Stop the head `up` started, and only it: SIGTERM its `ray start` (which drains the node and
    stops its processes while the GCS still answers), then whatever of its group is left."""
    for signum, target, grace_s in ((signal.SIGTERM, os.kill, 30), (signal.SIGTERM, os.killpg, 15),
                                    (signal.SIGKILL, os.killpg, 5)):
        try:
            target(pgid, signum)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            leader_gone = target is os.kill and not os.path.exists(f"/proc/{pgid}")
            if not _group_alive(pgid) or leader_gone:
                break
            time.sleep(0.3)
        if not _group_alive(pgid):
            return


def down() -> None:
    if not cluster_file().is_file():
        print("no Ray cluster recorded by `solo up`; nothing to stop")
        return
    cluster = json.loads(cluster_file().read_text())
    _stop_group(cluster["pid"])
    cluster_file().unlink(missing_ok=True)
    print(f"Ray cluster {cluster['address']} stopped")


# ---------------------------------------------------------------- jobs


def submit(job: str, config: Path | None, overrides: list[str], wait: bool) -> str:
    if config is not None and not config.is_file():
        raise SoloError(f"{config}: no such config file")
    if config is not None:
        config = config.resolve()
        try:
            config = config.relative_to(REPO_ROOT)  # the working dir travels: refer to it from inside
        except ValueError:
            pass
    entrypoint = ["python", "-m", f"jobs.{job}"]
    if config is not None:
        entrypoint += ["--config", str(config)]
    for override in overrides:
        entrypoint += ["--set", override]
    client = _job_client()
    runtime_env = {"working_dir": str(REPO_ROOT), "env_vars": worker_env(),
                   "excludes": [".venv", ".git", "benchmarks/results", "*.egg-info"]}
    deadline = time.monotonic() + 90
    while True:
        try:
            submission_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env)
            break
        except RuntimeError as error:
            # A head that has just started answers before its job agent does.
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise SoloError(f"the cluster refused the job: {str(error).splitlines()[0]}") from None
            time.sleep(2)
    print(submission_id, flush=True)
    if wait:
        status = follow(submission_id)
        if status != "SUCCEEDED":
            raise SoloError(f"job {submission_id} ended {status}: see `solo logs {submission_id}`")
    return submission_id


def follow(submission_id: str) -> str:
    """Stream a job's output until it ends; returns its final status."""
    import asyncio

    client = _job_client()

    async def tail() -> None:
        async for lines in client.tail_job_logs(submission_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    return str(client.get_job_status(submission_id).value)


def status() -> None:
    cluster = _cluster()
    client = _job_client()
    import ray

    ray.init(address=cluster["address"], logging_level="ERROR", log_to_driver=False)
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
        nodes = [n for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()
    print(f"cluster {cluster['address']}  dashboard {cluster['dashboard']}  nodes {len(nodes)}")
    for resource in ("CPU", "GPU", "memory"):
        if resource in total:
            scale = 1024**3 if resource == "memory" else 1
            unit = " GiB" if resource == "memory" else ""
            print(f"  {resource:<7} {free.get(resource, 0) / scale:8.1f} free of {total[resource] / scale:.1f}{unit}")
    jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
    if not jobs:
        print("no jobs yet")
        return
    print(f"\n{'submission id':<28} {'status':<10} {'started':<20} entrypoint")
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((job.start_time or 0) / 1000))
        print(f"{job.submission_id or job.job_id:<28} {job.status.value:<10} {started:<20} {job.entrypoint}")


def logs(submission_id: str, follow_logs: bool) -> None:
    client = _job_client()
    try:
        if follow_logs:
            follow(submission_id)
        else:
            print(client.get_job_logs(submission_id), end="")
    except RuntimeError as error:
        raise SoloError(f"no job {submission_id} on this cluster ({str(error).splitlines()[0]})") from None


# ---------------------------------------------------------------- serving


def resolve_model(name_or_path: str) -> str:
    """A model folder, or the name of a run whose exported model to serve."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path.resolve())
    from solo.pipeline import exported_model_dir

    exported = exported_model_dir(RunStore.named(name_or_path), name_or_path)
    if exported.is_dir():
        return str(exported)
    raise SoloError(f"no model at {name_or_path}, and no run named {name_or_path!r} with an exported model in "
                    f"{solo_home() / 'runs'}: run the pipeline first, or pass a Hugging Face model folder")


def serve_config(args: argparse.Namespace) -> ServeConfig:
    overrides = list(args.overrides)
    models = [resolve_model(value) for value in args.model or []]
    if len(models) > 1 and args.name is not None:
        raise SoloError("--name names one model: to name several, list them under models: in a --config file")
    if len(models) == 1:  # replaces what the config file serves
        overrides += [f"model={json.dumps(models[0])}", "models=[]"]
    elif models:
        overrides += ["model=null", f"models={json.dumps([{'path': path} for path in models])}"]
    for field in ("name", "host", "port"):
        value = getattr(args, field)
        if value is not None:
            overrides.append(f"{field}={value}")
    config = load_config(ServeConfig, args.config, overrides)
    if not config.served_models():
        raise SoloError("which model? pass --model PATH (an exported folder) or the name of a run")
    return config


def serve(args: argparse.Namespace) -> None:
    from solo.serving.run import serve_forever

    serve_forever(serve_config(args))


def report(run_name: str, config: Path | None) -> None:
    from solo.pipeline import PipelineConfig
    from solo.report import write_report

    run = RunStore.named(run_name)
    if not run.root.is_dir():
        raise SoloError(f"no run named {run_name!r} in {solo_home() / 'runs'}")
    settings = load_config(PipelineConfig, config or REPO_ROOT / "configs" / "pipelines" / "demo.yaml").evaluate
    print(f"report card: {write_report(run, settings)}")


def plan(args: argparse.Namespace) -> None:
    from solo.train import planner
    from solo.runtime import cuda_available

    if not cuda_available():  # DeepSpeed's estimators load its accelerator: say it is the CPU rather than be warned
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.preset is None:
        print(planner.presets_table(args.vocab_size, args.seq_len))
        return
    if args.host_mem is None or (args.gpu_mem is None) == (not args.cpu):
        raise SoloError("solo plan --preset P needs --host-mem GB, and --gpu-mem GB (a GPU) or --cpu (CPU workers)")
    for flag, value in (("--gpu-mem", args.gpu_mem), ("--host-mem", args.host_mem), ("--nvme", args.nvme),
                        ("--pcie-gbps", args.pcie_gbps)):
        if value is not None and not value > 0:
            raise SoloError(f"{flag} must be a positive number of GB (GB/s for --pcie-gbps), not {value:g}")
    for flag, value in (("--gpus", args.gpus), ("--micro-batch", args.micro_batch), ("--grad-accum", args.grad_accum),
                        ("--host-cores", args.host_cores), ("--seq-len", args.seq_len),
                        ("--vocab-size", args.vocab_size)):
        if value < 1:
            raise SoloError(f"{flag} must be at least 1, not {value}")
    hardware = planner.Hardware(gpu_mem_gb=args.gpu_mem, host_mem_gb=args.host_mem, nvme_gb=args.nvme, gpus=args.gpus,
                                gpu=args.gpu, pcie_gbps=args.pcie_gbps, host_cores=args.host_cores)
    model = planner.ModelShape.preset(args.preset, args.vocab_size, args.seq_len)
    print(planner.render(planner.plan(model, hardware, args.seq_len, args.micro_batch, args.grad_accum)))


def demo(port: int, overrides: list[str]) -> None:
    """`make demo`: a cluster, the demo pipeline as a Ray job, then the model served and asked."""
    started_cluster = not cluster_file().is_file()
    if started_cluster:
        up(num_cpus=None, num_gpus=None, port=6379, dashboard_port=DASHBOARD_PORT)
    try:
        config_path = REPO_ROOT / "configs" / "pipelines" / "demo.yaml"
        print("\n== training: the demo pipeline as a Ray job ==", flush=True)
        from solo.pipeline import PipelineConfig
        from solo.pipeline import exported_model_dir

        run_name = load_config(PipelineConfig, config_path, overrides).run  # a bad --set fails here, first
        submit("pipeline", config_path, overrides, wait=True)
        model = exported_model_dir(RunStore.named(run_name), run_name)
        print(f"\n== serving {model} ==", flush=True)
        ask(ServeConfig(model=str(model), port=port))
    finally:
        if started_cluster:
            down()


def ask(config: ServeConfig) -> None:
    from openai import OpenAI

    from solo.serving.run import serving

    question = "What does the function json.dumps do?"
    with serving(config) as base_url:
        api_key = (os.environ.get("SOLO_API_KEYS") or "none").split(",")[0].strip()
        client = OpenAI(base_url=base_url, api_key=api_key)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                               max_tokens=60, temperature=0)
        answer = reply.choices[0].message.content
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}]})
    print(f"\nQ: {question}\nA: {answer}\n\n"
          f"It was served at {base_url} (stopped now). Serve it again and call it:\n"
          f"  solo serve --model {config.model}\n"
          f"  curl {base_url}/chat/completions -H 'Content-Type: application/json' -d '{body}'\n", flush=True)


# ---------------------------------------------------------------- arguments


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="solo", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("up", help="start a local Ray head (dashboard on 127.0.0.1, token auth on)")
    p.add_argument("--num-cpus", type=int)
    p.add_argument("--num-gpus", type=int)
    p.add_argument("--port", type=int, default=6379, help="the head's GCS port, which other machines join")
    p.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT)

    commands.add_parser("down", help="stop the cluster `solo up` started")

    p = commands.add_parser("submit", help="run a job on the cluster; prints its submission id")
    p.add_argument("job", choices=available_jobs())
    p.add_argument("--config", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--wait", action="store_true", help="stream its output and wait for the end")

    commands.add_parser("status", help="the cluster's resources and jobs")

    p = commands.add_parser("logs", help="a job's output")
    p.add_argument("submission_id")
    p.add_argument("--follow", "-f", action="store_true")

    p = commands.add_parser("serve", help="serve a model behind an OpenAI-compatible API, in the foreground")
    p.add_argument("--model", action="append", help="an exported Hugging Face folder, or a run name; "
                                                     "repeat it to serve several models")
    p.add_argument("--name", help="the model's API name (default: its folder name); one --model only")
    p.add_argument("--config", type=Path, help="a serve config (configs/serve/)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    p = commands.add_parser("report", help="write a run's report card (report.md and plots)")
    p.add_argument("run", help="the run's name (its folder in $SOLO_HOME/runs)")
    p.add_argument("--config", type=Path, help="the pipeline config whose evaluate.cost prices the run")

    p = commands.add_parser("plan", help="will it fit? memory and tokens/s of every training strategy, and the pick")
    p.add_argument("--preset", choices=get_args(TrainConfig.model_fields["model"].annotation),
                   help="without it: every preset's parameters and FLOPs/token")
    p.add_argument("--gpu-mem", type=float, metavar="GB", help="memory of one GPU")
    p.add_argument("--cpu", action="store_true", help="plan for training on CPU workers (one core each), no GPU")
    p.add_argument("--host-mem", type=float, metavar="GB", help="the machine's memory")
    p.add_argument("--nvme", type=float, metavar="GB", help="free space on an NVMe drive for ZeRO-Infinity offload")
    p.add_argument("--gpus", type=int, default=1, help="GPUs on the machine, one worker each (with --cpu: workers)")
    p.add_argument("--gpu", default=DEFAULT_GPU, choices=list(PEAK_TFLOPS), help="its kind, for the peak TFLOPS")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per worker per forward pass")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (offload traffic "
                                                             "and CPU Adam come once a step)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--pcie-gbps", type=float, default=PCIE_GBPS, help="host↔device bandwidth")
    p.add_argument("--host-cores", type=int, default=HOST_CORES, help="cores running CPU Adam for offloaded optimizers")

    p = commands.add_parser("demo", help="train the demo model as a Ray job, serve it, ask it a question")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of configs/pipelines/demo.yaml")
    return root


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, in a log file too
    # Every cluster solo starts or joins uses token authentication, and Ray reads the mode once,
    # when it is first imported: so before any command imports it.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if args.command == "up":
        up(args.num_cpus, args.num_gpus, args.port, args.dashboard_port)
    elif args.command == "down":
        down()
    elif args.command == "submit":
        submit(args.job, args.config, args.overrides, args.wait)
    elif args.command == "status":
        status()
    elif args.command == "logs":
        logs(args.submission_id, args.follow)
    elif args.command == "serve":
        serve(args)
    elif args.command == "report":
        report(args.run, args.config)
    elif args.command == "demo":
        demo(args.port, args.overrides)
    elif args.command == "plan":
        plan(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
