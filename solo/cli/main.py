"""The `solo` command: a local Ray cluster, jobs on it, serving, and the planner.

    solo up [--num-cpus N] [--num-gpus N]     start a Ray head here (dashboard on 127.0.0.1, token auth on)
    solo down                                 stop it
    solo submit JOB [--config FILE] [--set key=value ...] [--wait]
                                              run python -m jobs.JOB on the cluster; prints the submission id
    solo status                               the cluster's resources and its jobs
    solo logs ID [--follow]                   a job's output
    solo serve --model PATH_OR_RUN [--model …] [--port N]
                                              an OpenAI-compatible endpoint, in the foreground
    solo export --model RUN_OR_DIR [--format hf|gguf] [--quant f32|f16|q8_0] [--output PATH]
                                              a Hugging Face folder with its model card, or a GGUF file and
                                              an Ollama Modelfile (llama.cpp, Ollama, LM Studio)
    solo report RUN [--config FILE]           the run's report card: report.md and plots
    solo demo                                 the whole promise: train the demo model, serve it, ask it something
    solo plan [--preset P | --config FILE [--set k=v ...] [--json]] --gpu-mem GB --host-mem GB [--nvme GB]
                                              will it fit? memory and tokens/s of every strategy, and the pick
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from solo.errors import main_guard


@dataclass(frozen=True)
class Command:
    """One `solo` command: the module that holds it (solo.cli.<module>), and what `solo --help` says of it."""

    module: str
    help: str


# A command's module is imported only when that command runs, so that `solo down` does not wait for
# torch and `solo plan` does not wait for Ray. Each module maps its commands to (arguments, run).
COMMANDS = {
    "up": Command("cluster", "start a local Ray head (dashboard on 127.0.0.1, token auth on)"),
    "down": Command("cluster", "stop the cluster `solo up` started"),
    "submit": Command("cluster", "run a job on the cluster; prints its submission id"),
    "status": Command("cluster", "the cluster's resources and jobs"),
    "logs": Command("cluster", "a job's output"),
    "serve": Command("serve", "serve a model behind an OpenAI-compatible API, in the foreground"),
    "export": Command("export", "a model as a Hugging Face folder with its card, or as GGUF with an Ollama Modelfile"),
    "report": Command("demo", "write a run's report card (report.md and plots)"),
    "demo": Command("demo", "train the demo model as a Ray job, serve it, ask it a question"),
    "plan": Command("plan", "will it fit? memory and tokens/s of every training strategy, and the pick"),
}

CommandSpec = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]


def command_spec(name: str) -> CommandSpec:
    # Every cluster solo starts or joins uses token authentication, and Ray reads the mode once, when it
    # is first imported: so before a command's module imports it.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    return importlib.import_module(f"solo.cli.{COMMANDS[name].module}").COMMANDS[name]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The arguments of `solo ARGV`; only the command named there has its module loaded."""
    root = argparse.ArgumentParser(prog="solo", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, command in COMMANDS.items():
        parser = commands.add_parser(name, help=command.help, description=command.help)
        if name == named:
            add_arguments, _ = command_spec(name)
            add_arguments(parser)
    return root.parse_args(argv)


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, in a log file too
    _, run = command_spec(args.command)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
