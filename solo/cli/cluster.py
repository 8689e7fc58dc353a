"""`solo up`, `down`, `submit`, `status` and `logs`: a local Ray cluster and the jobs on it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray
import ray._private.services as services
from ray.job_submission import JobSubmissionClient

from solo.config import REPO_ROOT
from solo.errors import SoloError
from solo.runtime import cluster_file, free_port, path_with_this_environment_first, worker_env
from solo.store import solo_home

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
    cluster = _cluster()
    try:
        return JobSubmissionClient(cluster["dashboard"])
    except (ConnectionError, RuntimeError) as error:
        raise SoloError(f"the Ray cluster at {cluster['dashboard']} does not answer ({str(error).splitlines()[0]}): "
                        f"run `solo down` then `solo up`") from None


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
    client = _job_client()

    async def tail() -> None:
        async for lines in client.tail_job_logs(submission_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    return str(client.get_job_status(submission_id).value)


def status() -> None:
    cluster = _cluster()
    client = _job_client()

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


# ---------------------------------------------------------------- the commands


def _up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-cpus", type=int, help="cores Ray may use (default: all)")
    parser.add_argument("--num-gpus", type=int, help="GPUs Ray may use (default: all it finds)")
    parser.add_argument("--port", type=int, default=6379, help="the head's GCS port, which other machines join")
    parser.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT, help="the dashboard's port (127.0.0.1)")


def _submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", choices=available_jobs(), help="an entry point in jobs/")
    parser.add_argument("--config", type=Path, help="the job's YAML config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting (repeatable)")
    parser.add_argument("--wait", action="store_true", help="stream its output and wait for the end")


def _logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission_id", help="what `solo submit` printed")
    parser.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


COMMANDS = {
    "up": (_up_arguments, lambda args: up(args.num_cpus, args.num_gpus, args.port, args.dashboard_port)),
    "down": (_no_arguments, lambda args: down()),
    "submit": (_submit_arguments, lambda args: submit(args.job, args.config, args.overrides, args.wait)),
    "status": (_no_arguments, lambda args: status()),
    "logs": (_logs_arguments, lambda args: logs(args.submission_id, args.follow)),
}
