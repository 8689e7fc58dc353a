"""Serving a trained model behind an OpenAI-compatible API.

`engine` is the contract between the API and a model (token ids in, token ids out); `cpu_engine`
fulfils it with a batched decoding loop on CPU (run by `engine_process` in a process of its own
when served), `vllm_engine` with vLLM on GPUs; `protocol` and
`gateway` are the HTTP side; `plan` decides what to deploy (models, engines, adapters, replicas);
`run` starts and stops the Ray Serve application that `services/openai_app.py` assembles from
these parts.
"""
