"""Integrations with the runtimes models are evaluated and served in: lm-evaluation-harness (model types
lahis_hf / lahis_vllm and the task folder) and vLLM (load-time, live and per-request LoRA masks).

Importing these packages imports neither lm_eval nor vLLM; only the modules that need them do."""
