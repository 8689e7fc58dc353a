"""`solo serve`: an OpenAI-compatible endpoint over exported models, in the foreground."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from openai import OpenAI

from solo.config import load_config
from solo.errors import SoloError
from solo.serving.config import ServeConfig
from solo.serving.run import serve_forever, serving
from solo.store import RunStore, exported_model_dir, solo_home


def resolve_model(name_or_path: str) -> str:
    """A model folder, or the name of a run whose exported model to serve."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path.resolve())

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
    serve_forever(serve_config(args))


def ask(config: ServeConfig) -> None:
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


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", help="an exported Hugging Face folder, or a run name; "
                                                         "repeat it to serve several models")
    parser.add_argument("--name", help="the model's API name (default: its folder name); one --model only")
    parser.add_argument("--config", type=Path, help="a serve config (configs/serve/)")
    parser.add_argument("--host", help="the address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="the port to listen on (default 8000)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting of the serve config (repeatable)")


COMMANDS = {"serve": (_arguments, serve)}
