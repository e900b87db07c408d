"""Payload shapes of llama.cpp ``llama-server``, copied from real captured responses.

The captures are in ``tests/fixtures/llama-server`` (build b1-0c1e570). Field names,
order and nesting follow them; only values change with the simulated model and load.
"""

from __future__ import annotations

import re
from typing import Any

from lmtui.sim.spec import SimModel
from lmtui.sim.state import Counters, Job

JSON = dict[str, Any]

SAMPLING_PARAMS: JSON = {
    "seed": 4294967295,
    "temperature": 0.800000011920929,
    "dynatemp_range": 0.0,
    "dynatemp_exponent": 1.0,
    "top_k": 40,
    "top_p": 0.949999988079071,
    "min_p": 0.05000000074505806,
    "top_n_sigma": -1.0,
    "xtc_probability": 0.0,
    "xtc_threshold": 0.10000000149011612,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "dry_multiplier": 0.0,
    "dry_base": 1.75,
    "dry_allowed_length": 2,
    "dry_penalty_last_n": 64,
    "mirostat": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.10000000149011612,
    "adaptive_target": -1.0,
    "adaptive_decay": 0.8999999761581421,
    "max_tokens": -1,
    "n_predict": -1,
    "n_keep": 0,
    "n_discard": 0,
    "ignore_eos": False,
    "stream": False,
    "n_probs": 0,
    "min_keep": 0,
    "chat_format": "Content-only",
    "reasoning_format": "none",
    "reasoning_in_content": False,
    "generation_prompt": "",
    "samplers": [
        "penalties",
        "dry",
        "top_n_sigma",
        "top_k",
        "typ_p",
        "top_p",
        "min_p",
        "xtc",
        "temperature",
    ],
    "speculative.types": "none",
    "timings_per_token": False,
    "post_sampling_probs": False,
    "backend_sampling": False,
    "lora": [],
}

CHAT_TEMPLATE = (
    "{%- for message in messages -%}\n  {{- '<|im_start|>' + message.role + '\n' + "
    "message.content + '<|im_end|>\n' -}}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\n' -}}\n{%- endif -%}"
)

TEMPLATE_CAPS: JSON = {
    "supports_object_arguments": False,
    "supports_parallel_tool_calls": False,
    "supports_preserve_reasoning": False,
    "supports_reasoning_effort": False,
    "supports_string_content": True,
    "supports_system_role": True,
    "supports_tool_calls": False,
    "supports_tools": False,
    "supports_typed_content": False,
}

#: (name, help, type) in the order llama-server prints them.
METRICS: tuple[tuple[str, str, str], ...] = (
    (
        "prompt_tokens_total",
        "Number of prompt tokens processed, excluding cached tokens",
        "counter",
    ),
    ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache", "counter"),
    ("prompt_seconds_total", "Total time spent processing prompts", "counter"),
    ("tokens_predicted_total", "Number of generation tokens processed", "counter"),
    ("tokens_predicted_seconds_total", "Total time spent generating tokens", "counter"),
    (
        "n_decode_total",
        "Total number of llama_decode() calls, excluding speculative decoding "
        "and multimodal decoding",
        "counter",
    ),
    ("n_tokens_max", "Largest observed sequence length (prompt + generation)", "counter"),
    ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated", "counter"),
    (
        "spec_decode_num_accepted_tokens_total",
        "Speculative: Total draft tokens accepted by the target model",
        "counter",
    ),
    (
        "spec_decode_num_drafts_total",
        "Speculative: Total speculative decoding verification steps",
        "counter",
    ),
    ("prompt_tokens_seconds", "Average prompt throughput in tokens/s", "gauge"),
    ("predicted_tokens_seconds", "Average generation throughput in tokens/s", "gauge"),
    ("requests_processing", "Number of requests processing", "gauge"),
    ("requests_deferred", "Number of requests deferred", "gauge"),
    ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call", "gauge"),
)

_FTYPES = {
    "Q4_K_M": "Q4_K - Medium",
    "Q4_K_S": "Q4_K - Small",
    "Q5_K_M": "Q5_K - Medium",
    "Q5_K_S": "Q5_K - Small",
    "Q3_K_M": "Q3_K - Medium",
    "Q6_K": "Q6_K",
    "Q8_0": "Q8_0",
    "Q4_0": "Q4_0",
    "F16": "F16",
    "BF16": "BF16",
}


def ftype(quant: str) -> str:
    return _FTYPES.get(quant.upper(), quant)


def n_params(params: str) -> int:
    """ "7B" -> 7_000_000_000, "270M" -> 270_000_000."""
    m = re.match(r"([\d.]+)\s*([KMBT]?)", params.upper())
    if not m:
        return 0
    scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[m.group(2)]
    return int(float(m.group(1)) * scale)


def model_meta(model: SimModel, n_ctx: int) -> JSON:
    return {
        "vocab_type": 1,
        "n_vocab": 151936,
        "n_ctx": n_ctx,
        "n_ctx_train": model.max_context,
        "n_embd": 4096,
        "n_params": n_params(model.params),
        "size": model.size_bytes,
        "ftype": ftype(model.quant),
    }


def props(
    *,
    alias: str,
    path: str,
    model: SimModel,
    total_slots: int,
    n_ctx: int,
    build: str,
    sleeping: bool = False,
) -> JSON:
    return {
        "default_generation_settings": {"params": SAMPLING_PARAMS, "n_ctx": n_ctx},
        "total_slots": total_slots,
        "model_alias": alias,
        "model_ftype": ftype(model.quant),
        "model_path": path,
        "modalities": {"vision": False, "video": False, "audio": False},
        "media_marker": "<__media_simulatedmediamarker0000000000000__>",
        "endpoint_slots": True,
        "endpoint_props": False,
        "endpoint_metrics": True,
        "ui": True,
        "ui_settings": {},
        "chat_template": CHAT_TEMPLATE,
        "chat_template_caps": TEMPLATE_CAPS,
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "build_info": build,
        "is_sleeping": sleeping,
        "cors_proxy_enabled": False,
    }


def router_props(*, max_instances: int, autoload: bool, build: str) -> JSON:
    """A router's own ``GET /props`` (no ``?model=``), as captured in ``props-router.json``:
    ``max_instances`` is ``--models-max`` as given, 0 for no limit."""
    return {
        "role": "router",
        "max_instances": max_instances,
        "models_autoload": autoload,
        "model_alias": "llama-server",
        "model_path": "none",
        "default_generation_settings": {"params": None, "n_ctx": 0},
        "ui_settings": {},
        "build_info": build,
        "cors_proxy_enabled": False,
    }


def slot(idx: int, n_ctx: int, job: Job | None) -> JSON:
    """One ``/slots`` entry: idle, or processing ``job``."""
    entry: JSON = {
        "id": idx,
        "n_ctx": n_ctx,
        "speculative": False,
        "is_processing": job is not None,
    }
    if job is None:
        return entry
    entry.update(
        id_task=job.id,
        n_prompt_tokens=job.prompt_tokens + job.decoded,
        n_prompt_tokens_processed=job.prompt_tokens if job.first_token else 0,
        n_prompt_tokens_cache=0,
        params={
            **SAMPLING_PARAMS,
            "max_tokens": job.completion_tokens,
            "n_predict": job.completion_tokens,
        },
        next_token=[
            {
                "has_next_token": True,
                "has_new_line": False,
                "n_remain": job.completion_tokens - job.decoded,
                "n_decoded": job.decoded,
            }
        ],
    )
    return entry


def metrics_text(c: Counters, *, processing: int, deferred: int) -> str:
    """The Prometheus text of ``/metrics`` for these counters."""
    prompt_rate = c.prompt_tokens_total / c.prompt_seconds_total if c.prompt_seconds_total else 0
    gen_rate = (
        c.tokens_predicted_total / c.tokens_predicted_seconds_total
        if c.tokens_predicted_seconds_total
        else 0
    )
    values: dict[str, float] = {
        "prompt_tokens_total": c.prompt_tokens_total,
        "prompt_tokens_cached_total": 0,
        "prompt_seconds_total": round(c.prompt_seconds_total, 6),
        "tokens_predicted_total": c.tokens_predicted_total,
        "tokens_predicted_seconds_total": round(c.tokens_predicted_seconds_total, 6),
        "n_decode_total": c.n_decode_total,
        "n_tokens_max": c.n_tokens_max,
        "spec_decode_num_draft_tokens_total": 0,
        "spec_decode_num_accepted_tokens_total": 0,
        "spec_decode_num_drafts_total": 0,
        "prompt_tokens_seconds": round(prompt_rate, 3),
        "predicted_tokens_seconds": round(gen_rate, 4),
        "requests_processing": processing,
        "requests_deferred": deferred,
        "n_busy_slots_per_decode": min(processing, 1) if processing else 0,
    }
    lines = []
    for name, help_, type_ in METRICS:
        v = values[name]
        text = str(int(v)) if float(v).is_integer() else repr(float(v))
        lines += [
            f"# HELP llamacpp:{name} {help_}",
            f"# TYPE llamacpp:{name} {type_}",
            f"llamacpp:{name} {text}",
        ]
    return "\n".join(lines) + "\n"


def router_entry(
    model: SimModel,
    *,
    status: JSON,
    port: int,
    parallel: int,
    ctx_size: int,
    created: int,
    meta: bool,
) -> JSON:
    """One entry of a router's ``/models`` list."""
    path = f"/srv/models/{model.key}.gguf"
    status = {
        **status,
        "args": [
            "/usr/local/bin/llama-server",
            "--host",
            "127.0.0.1",
            "--metrics",
            "--port",
            str(port),
            "--alias",
            model.key,
            "--ctx-size",
            str(ctx_size),
            "--model",
            path,
            "--parallel",
            str(parallel),
        ],
        "preset": f"[{model.key}]\nmetrics = 1\nctx-size = {ctx_size}\nmodel = {path}\n"
        f"parallel = {parallel}\n\n",
    }
    entry: JSON = {
        "id": model.key,
        "aliases": [],
        "tags": [],
        "object": "model",
        "owned_by": "llamacpp",
        "created": created,
        "status": status,
        "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
        "source": "models_dir",
        "can_remove": False,
    }
    if meta:
        entry["meta"] = model_meta(model, max(1, ctx_size // parallel))
    return entry
