"""`solo demo` and `solo report`: the whole promise on this machine, and a run's report card."""

from __future__ import annotations

import argparse
from pathlib import Path

from solo.cli.cluster import DASHBOARD_PORT, down, submit, up
from solo.cli.serve import ask
from solo.config import REPO_ROOT, load_config
from solo.errors import SoloError
from solo.pipeline import PipelineConfig
from solo.report import write_report
from solo.runtime import cluster_file
from solo.serving.config import ServeConfig
from solo.store import RunStore, exported_model_dir, solo_home


def report(run_name: str, config: Path | None) -> None:
    run = RunStore.named(run_name)
    if not run.root.is_dir():
        raise SoloError(f"no run named {run_name!r} in {solo_home() / 'runs'}")
    settings = load_config(PipelineConfig, config or REPO_ROOT / "configs" / "pipelines" / "demo.yaml").evaluate
    print(f"report card: {write_report(run, settings)}")


def demo(port: int, overrides: list[str]) -> None:
    """`make demo`: a cluster, the demo pipeline as a Ray job, then the model served and asked."""
    started_cluster = not cluster_file().is_file()
    if started_cluster:
        up(num_cpus=None, num_gpus=None, port=6379, dashboard_port=DASHBOARD_PORT)
    try:
        config_path = REPO_ROOT / "configs" / "pipelines" / "demo.yaml"
        print("\n== training: the demo pipeline as a Ray job ==", flush=True)

        run_name = load_config(PipelineConfig, config_path, overrides).run  # a bad --set fails here, first
        submit("pipeline", config_path, overrides, wait=True)
        model = exported_model_dir(RunStore.named(run_name), run_name)
        print(f"\n== serving {model} ==", flush=True)
        ask(ServeConfig(model=str(model), port=port))
    finally:
        if started_cluster:
            down()


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run's name (its folder in $SOLO_HOME/runs)")
    parser.add_argument("--config", type=Path, help="the pipeline config whose evaluate.cost prices the run")


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8000, help="where the model is served while it is asked")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of configs/pipelines/demo.yaml")


COMMANDS = {
    "report": (_report_arguments, lambda args: report(args.run, args.config)),
    "demo": (_demo_arguments, lambda args: demo(args.port, args.overrides)),
}
