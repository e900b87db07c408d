"""The demo cluster a new user sees: four nodes of mixed kinds, a dozen realistic models."""

from __future__ import annotations

from lmtui.core.model import NodeKind
from lmtui.sim.spec import SimModel, SimNodeSpec


def _catalog() -> dict[str, SimModel]:
    # Sizes are typical Q4_K_M GGUF files plus a little runtime overhead.
    models = [
        SimModel(
            "nomic-embed-text-v1.5",
            0.3,
            kind="embedding",
            max_context=2048,
            params="137M",
            quant="F16",
        ),
        SimModel("llama-3.2-3b-instruct", 2.0, max_context=131072, params="3B"),
        SimModel("qwen2.5-7b-instruct", 4.7, max_context=32768, params="7B"),
        SimModel("llama-3.1-8b-instruct", 4.9, max_context=131072, params="8B"),
        SimModel("gemma-3-12b-it", 8.1, max_context=131072, params="12B"),
        SimModel("qwen2.5-14b-instruct", 9.0, max_context=32768, params="14B"),
        SimModel("mistral-small-3.1-24b-instruct", 14.3, max_context=131072, params="24B"),
        SimModel("acme-support-ft-32b", 18.5, max_context=32768, params="32B"),
        SimModel("qwen2.5-coder-32b-instruct", 19.9, max_context=32768, params="32B"),
        SimModel("deepseek-r1-distill-qwen-32b", 19.9, max_context=32768, params="32B"),
        SimModel("llama-3.3-70b-instruct", 42.5, max_context=131072, params="70B"),
        SimModel("qwen2.5-72b-instruct", 47.4, max_context=32768, params="72B"),
    ]
    return {m.key: m for m in models}


def demo_specs() -> list[SimNodeSpec]:
    """Four nodes like the cluster lmtui was built for: two Mac Studios, two Linux boxes."""
    c = _catalog()

    def pick(*keys: str) -> list[SimModel]:
        return [c[k] for k in keys]

    return [
        SimNodeSpec(
            name="mac-studio-1",
            kind=NodeKind.LMSTUDIO,
            memory_gb=512.0,
            version="0.4.2",
            models=list(c.values()),
            loaded=[
                "llama-3.3-70b-instruct",
                "qwen2.5-coder-32b-instruct",
                "nomic-embed-text-v1.5",
            ],
            parallel=4,
            disk_gb_per_s=5.0,
            prefill_tok_per_s=900.0,
            decode_tok_per_s=28.0,
        ),
        SimNodeSpec(
            # LM Studio before 0.4: one request at a time, whatever is loaded.
            name="mac-studio-2",
            kind=NodeKind.LMSTUDIO,
            memory_gb=192.0,
            version="0.3.31",
            models=pick(
                "acme-support-ft-32b",
                "deepseek-r1-distill-qwen-32b",
                "qwen2.5-14b-instruct",
                "llama-3.1-8b-instruct",
                "mistral-small-3.1-24b-instruct",
                "qwen2.5-72b-instruct",
            ),
            loaded=["acme-support-ft-32b", "qwen2.5-14b-instruct"],
            parallel=1,
            disk_gb_per_s=4.0,
            prefill_tok_per_s=600.0,
            decode_tok_per_s=22.0,
        ),
        SimNodeSpec(
            name="linux-ollama",
            kind=NodeKind.OLLAMA,
            memory_gb=64.0,
            models=pick(
                "llama-3.2-3b-instruct",
                "qwen2.5-7b-instruct",
                "llama-3.1-8b-instruct",
                "gemma-3-12b-it",
                "qwen2.5-14b-instruct",
                "nomic-embed-text-v1.5",
                "qwen2.5-coder-32b-instruct",
            ),
            loaded=["qwen2.5-7b-instruct", "nomic-embed-text-v1.5"],
            parallel=2,
            max_loaded_models=3,
            disk_gb_per_s=2.0,
            prefill_tok_per_s=1500.0,
            decode_tok_per_s=45.0,
        ),
        SimNodeSpec(
            name="linux-llamacpp",
            kind=NodeKind.LLAMACPP,
            memory_gb=48.0,
            router_mode=True,
            models_max=2,
            models=pick(
                "gemma-3-12b-it",
                "llama-3.1-8b-instruct",
                "qwen2.5-14b-instruct",
                "mistral-small-3.1-24b-instruct",
            ),
            loaded=["gemma-3-12b-it"],
            parallel=4,
            disk_gb_per_s=2.5,
            prefill_tok_per_s=2500.0,
            decode_tok_per_s=60.0,
        ),
    ]
