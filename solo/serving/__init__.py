"""Serving a trained model behind an OpenAI-compatible API.

`engine` is the contract between the API and a model (token ids in, token ids out); `cpu_engine`
fulfils it with a plain decoding loop; `protocol` and `gateway` are the HTTP side; `run` starts and
stops the Ray Serve application that `services/openai_app.py` assembles from these parts.
"""
