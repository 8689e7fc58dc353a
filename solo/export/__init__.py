"""The export stage and `solo export`: the model a run ships, as a Hugging Face folder (transformers, vLLM)
with its model card, and as one GGUF file (llama.cpp, Ollama, LM Studio) with an Ollama Modelfile."""
