"""What every entry point in jobs/ shares: its arguments, and errors as one line, not a traceback."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Callable

from solo.errors import SoloError


def job_parser(doc: str, *, inputs: bool = False, data: bool = False, model: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML config (default: the job's default in configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set pretrain.max_steps=50 (repeatable)")
    parser.add_argument("--output", type=Path, help="folder to write to (default: in the artifact store)")
    if inputs:
        parser.add_argument("--input", dest="inputs", action="append", default=[], metavar="PATH",
                            help="raw text to read: a file or folder of text, jsonl, json or parquet (repeatable)")
    if data:
        parser.add_argument("--data", type=Path, help="input data folder")
    if model:
        parser.add_argument("--model", type=Path, help="a Hugging Face model folder")
    return parser


def main_guard(main: Callable[..., int | None]) -> Callable[..., int]:
    """Run `main`; a SoloError (something the user can fix) ends it with one line and exit code 2."""

    @functools.wraps(main)
    def guarded(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except SoloError as error:
            print(f"solo: {error}", file=sys.stderr, flush=True)
            return 2
        except KeyboardInterrupt:
            print("solo: interrupted", file=sys.stderr)
            return 130

    return guarded
