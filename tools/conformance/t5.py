"""t5/ case: Wan's umT5 encoder on token ids, through `load_t5` and `TextEncoder`.

Compares `hidden_states` [B, L, dim] over every row (padding rows included: the mask hides keys,
not queries) and each `context_b` [len_b, dim], the per-prompt rows `TextEncoder` keeps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from model.config import T5Config
from model.convert.umt5 import load_t5
from model.loading import read_checkpoint
from model.modules.text_encoder import TextEncoder

from . import Check, compare, exact, load_case_json

_MAX_DISTANCE_KEY = "relative_attention_max_distance"


def run(case_dir: Path) -> list[Check]:
    case = load_case_json(case_dir)
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    refs = load_file(str(case_dir / "outputs.safetensors"))
    ids, mask = inputs["ids"], inputs["mask"]  # [B, L] int64 each

    overrides = {"text_len": ids.shape[1]}
    for where in (case, case["config"]):  # top level in the public case; accept it in config too
        if _MAX_DISTANCE_KEY in where:
            overrides["max_distance"] = where[_MAX_DISTANCE_KEY]
    if "eps" in case["config"]:
        overrides["eps"] = case["config"]["eps"]
    config = T5Config.from_official(case["config"], **overrides)

    weights = case_dir / "weights.safetensors"
    model = load_t5(read_checkpoint(weights), config, source=str(weights), dtype=torch.float32)
    encoder = TextEncoder(model, tokenizer=None, text_len=config.text_len)

    hidden = encoder(ids, mask)  # [B, L, dim]
    contexts = encoder.encode_ids(ids, mask)  # B x [len_b, dim]
    outputs = {"hidden_states": hidden} | {f"context_{b}": c for b, c in enumerate(contexts)}

    checks = []
    for name, ref in refs.items():
        if name in outputs:
            checks.append(compare(name, outputs[name], ref))
        else:
            checks.append(exact(name, False, "no such output from the encoder"))
    extra = sorted(set(outputs) - set(refs))
    if extra:
        checks.append(exact("contexts", False, f"outputs with no reference: {', '.join(extra)}"))
    return checks
