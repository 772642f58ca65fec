"""LoRA files for the fusion DiT: read, map onto the towers, merge (or keep unmerged).

Formats, as Wan LoRAs are published (read like diffusers' and ComfyUI's loaders, our own code):
- diffusers / PEFT: `<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight` [out, r],
  optional `<module>.alpha` (scale alpha / r; without it 1);
- kohya / ComfyUI: `<module>.lora_down.weight`, `<module>.lora_up.weight` and `<module>.alpha`
  (scale alpha / r);
- full differences some Wan LoRAs carry: `<module>.diff` (weight) and `<module>.diff_b` (bias).

Module names: Ovi's own (`video_model.blocks.0.self_attn.q`, `audio_model....`), Wan's
(`blocks.0.self_attn.q`, behind `diffusion_model.`, `transformer.` or `base_model.model.`),
diffusers' Wan names (`blocks.0.attn1.to_q`, `ffn.net.0.proj`, renamed below) and kohya's
underscored form (`lora_unet_blocks_0_self_attn_q`). A Wan name is the video tower's (Ovi's
video tower is a Wan2.2-5B DiT); Ovi names pick their tower. A key that matches no weight is an
error naming it; a file whose matrices do not fit the towers' shapes is refused as a LoRA for
another architecture.

`apply_loras(model, specs)` merges into the weights (no cost per step); `attach_loras` wraps the
targeted linears in `LoraLinear` so each request can switch adapters and strengths
(`set_lora_scales`) without reloading.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .loading import read_checkpoint

TOWERS = ("video_model", "audio_model")
# wrapper prefixes in front of the module name, stripped (longest first)
_PREFIXES = ("base_model.model.", "diffusion_model.", "transformer.")
_KOHYA_PREFIX = "lora_unet_"
# key suffix -> role
_SUFFIXES = {
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_A.default.weight": "down",
    ".lora_B.default.weight": "up",
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".alpha": "alpha",
    ".diff": "diff",
    ".diff_b": "diff_b",
}
# diffusers' Wan module names -> Wan's (anchored, one-to-one)
_DIFFUSERS_RENAMES = (
    (re.compile(r"^blocks\.(\d+)\.attn1\.to_(q|k|v)$"), r"blocks.\1.self_attn.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn1\.to_out\.0$"), r"blocks.\1.self_attn.o"),
    (re.compile(r"^blocks\.(\d+)\.attn2\.to_(q|k|v)$"), r"blocks.\1.cross_attn.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn2\.to_out\.0$"), r"blocks.\1.cross_attn.o"),
    (re.compile(r"^blocks\.(\d+)\.ffn\.net\.0\.proj$"), r"blocks.\1.ffn.0"),
    (re.compile(r"^blocks\.(\d+)\.ffn\.net\.2$"), r"blocks.\1.ffn.2"),
    (re.compile(r"^blocks\.(\d+)\.attn1\.norm_(q|k)$"), r"blocks.\1.self_attn.norm_\2"),
    (re.compile(r"^blocks\.(\d+)\.attn2\.norm_(q|k)$"), r"blocks.\1.cross_attn.norm_\2"),
    (re.compile(r"^blocks\.(\d+)\.norm2$"), r"blocks.\1.norm3"),
    (re.compile(r"^blocks\.(\d+)\.scale_shift_table$"), r"blocks.\1.modulation.modulation"),
    (re.compile(r"^scale_shift_table$"), "head.modulation"),
    (re.compile(r"^condition_embedder\.text_embedder\.linear_1$"), "text_embedding.0"),
    (re.compile(r"^condition_embedder\.text_embedder\.linear_2$"), "text_embedding.2"),
    (re.compile(r"^condition_embedder\.time_embedder\.linear_1$"), "time_embedding.0"),
    (re.compile(r"^condition_embedder\.time_embedder\.linear_2$"), "time_embedding.2"),
    (re.compile(r"^condition_embedder\.time_proj$"), "time_projection.1"),
    (re.compile(r"^proj_out$"), "head.head"),
    # Wan's block modulation table is a parameter of the block; Ovi wraps it in a module
    (re.compile(r"^blocks\.(\d+)\.modulation$"), r"blocks.\1.modulation.modulation"),
)


class LoraError(ValueError):
    """A LoRA file that cannot be applied: unknown keys, another architecture, a bad spec."""


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: a file and its strength (`FILE[:SCALE]` on the command line)."""

    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """`FILE` or `FILE:SCALE` (a trailing `:number` is the scale, default 1)."""
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                return cls(head, float(tail))
            except ValueError:
                pass  # a colon in the path itself
        return cls(text, 1.0)


@dataclass
class LoraDelta:
    """What one LoRA file changes in one module. down: [r, in...], up: [out, r] (low rank,
    scaled by `alpha / r`); diff: a full weight difference; diff_b: a bias difference."""

    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None

    @property
    def rank_scale(self) -> float:
        if self.down is None or self.alpha is None:
            return 1.0
        return self.alpha / self.down.shape[0]

    def weight_delta(self, shape: torch.Size) -> torch.Tensor | None:
        """The weight change at strength 1, float32, in the weight's `shape`."""
        delta = None
        if self.down is not None and self.up is not None:
            low = self.up.float().flatten(1) @ self.down.float().flatten(1)  # [out, in * k]
            delta = (low * self.rank_scale).reshape(shape)
        if self.diff is not None:
            delta = self.diff.float() if delta is None else delta + self.diff.float()
        return delta


@dataclass
class LoraWeights:
    """A LoRA file mapped onto a model: module name (`video_model.blocks.0.self_attn.q`) ->
    its `LoraDelta`."""

    source: str
    deltas: dict[str, LoraDelta] = field(default_factory=dict)

    @property
    def towers(self) -> list[str]:
        return sorted({name.split(".", 1)[0] for name in self.deltas})


def _split_key(key: str) -> tuple[str, str] | None:
    """(module part, role) of a LoRA key, or None for a key of no known kind."""
    for suffix, role in _SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _kohya_table(model: nn.Module) -> dict[str, str]:
    """Underscored module names (kohya) -> module names: Ovi's and, for the video tower, Wan's."""
    table = {}
    for name, _ in model.named_modules():
        if not name:
            continue
        table[name.replace(".", "_")] = name
        if name.startswith("video_model."):
            table[name[len("video_model.") :].replace(".", "_")] = name
    return table


def _module_name(base: str, kohya: Mapping[str, str]) -> str | None:
    """The model's module name a LoRA key's module part stands for, or None."""
    if base.startswith(_KOHYA_PREFIX):
        return kohya.get(base[len(_KOHYA_PREFIX) :])
    for prefix in _PREFIXES:
        if base.startswith(prefix):
            base = base[len(prefix) :]
            break
    tower = "video_model"
    for name in TOWERS:
        if base.startswith(name + "."):
            tower, base = name, base[len(name) + 1 :]
    for pattern, replacement in _DIFFUSERS_RENAMES:
        base = pattern.sub(replacement, base)
    return f"{tower}.{base}"


def _targets(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """What a LoRA may change, by name: each module with a weight -> (weight, bias), and each
    bare parameter (`head.modulation`, the blocks' modulation tables) -> (it, None)."""
    targets: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if name and isinstance(weight, torch.Tensor):
            targets[name] = (weight, getattr(module, "bias", None))
    for name, param in model.named_parameters():
        if not name.endswith((".weight", ".bias")):
            targets[name] = (param, None)
    return targets


def map_lora(state: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> LoraWeights:
    """Map a LoRA state dict onto `model` (a `FusionModel`); LoraError names what does not fit."""
    modules = _targets(model)
    kohya = _kohya_table(model)
    weights = LoraWeights(source)
    unknown: list[str] = []
    for key, tensor in state.items():
        split = _split_key(key)
        name = _module_name(split[0], kohya) if split else None
        if split is None or name is None or name not in modules:
            unknown.append(key)
            continue
        delta = weights.deltas.setdefault(name, LoraDelta())
        role = split[1]
        if role == "alpha":
            delta.alpha = float(tensor.float().reshape(-1)[0])
        else:
            setattr(delta, role, tensor)
    if unknown and len(unknown) == len(state):
        raise LoraError(
            f"{source}: not a LoRA for Ovi or Wan2.2-5B: none of its {len(state)} keys matches a"
            f" weight of the model (e.g. {', '.join(sorted(unknown)[:3])})"
        )
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise LoraError(f"{source}: {len(unknown)} key(s) match no weight: {shown}{more}")
    for name, delta in weights.deltas.items():
        _check_shapes(source, name, delta, modules[name])
    return weights


def _check_shapes(
    source: str, name: str, delta: LoraDelta, target: tuple[torch.Tensor, torch.Tensor | None]
) -> None:
    weight, bias = target
    if (delta.down is None) != (delta.up is None):
        raise LoraError(f"{source}: {name} has only one of the two LoRA matrices")
    if delta.down is not None and delta.up is not None:
        out_features, in_features = weight.shape[0], weight[0].numel()
        if (
            delta.up.shape[0] != out_features
            or delta.down.flatten(1).shape[1] != in_features
            or delta.up.flatten(1).shape[1] != delta.down.shape[0]
        ):
            raise LoraError(
                f"{source}: a LoRA for another architecture: {name} is {list(weight.shape)} in"
                f" this model, the LoRA's matrices are {list(delta.up.shape)} x"
                f" {list(delta.down.shape)}"
            )
    if delta.diff is not None and delta.diff.shape != weight.shape:
        raise LoraError(
            f"{source}: a LoRA for another architecture: {name} is {list(weight.shape)},"
            f" its diff is {list(delta.diff.shape)}"
        )
    if delta.diff_b is not None and (bias is None or delta.diff_b.shape != bias.shape):
        raise LoraError(f"{source}: {name}'s bias difference does not fit the model")


def load_lora(path: str | Path, model: nn.Module) -> LoraWeights:
    """Read a LoRA file (safetensors or .pt/.pth) and map it onto `model` (`map_lora`)."""
    path = Path(path)
    if not path.is_file():
        raise LoraError(f"LoRA file not found: {path}")
    return map_lora(read_checkpoint(path), model, str(path))


@torch.no_grad()
def merge_lora(model: nn.Module, lora: LoraWeights, scale: float = 1.0) -> None:
    """Add `scale` x the LoRA's changes to the weights (computed in float32, stored back in each
    weight's dtype)."""
    targets = _targets(model)
    for name, delta in lora.deltas.items():
        weight, bias = targets[name]
        change = delta.weight_delta(weight.shape)
        if change is not None:
            weight.copy_((weight.float() + scale * change.to(weight.device)).to(weight.dtype))
        if delta.diff_b is not None and bias is not None:
            bias.copy_((bias.float() + scale * delta.diff_b.float().to(bias.device)).to(bias.dtype))


def apply_loras(model: nn.Module, specs: Iterable[LoraSpec | str]) -> list[LoraWeights]:
    """Read every LoRA first (all errors before any weight changes), then merge each at its
    strength. Returns the mapped files (their towers are logged by the caller)."""
    specs = [LoraSpec.parse(s) if isinstance(s, str) else s for s in specs]
    loras = [load_lora(s.path, model) for s in specs]
    for spec, lora in zip(specs, loras, strict=True):
        merge_lora(model, lora, spec.scale)
    return loras


# --- unmerged: per-request switching --------------------------------------------------------


class LoraLinear(nn.Module):
    """`nn.Linear` plus named low-rank adapters applied on the fly:
    y = base(x) + sum_name scale_name * (x @ down^T) @ up^T * alpha / r.
    Adapters with scale 0 cost nothing."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.adapters: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        self.scales: dict[str, float] = {}

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out]."""
        out = self.base(x)
        for name, scale in self.scales.items():
            if scale == 0 or name not in self.adapters:
                continue
            down, up, rank_scale = self.adapters[name]
            down, up = down.to(x.device, x.dtype), up.to(x.device, x.dtype)  # no-ops if there
            out = out + (x @ down.t()) @ (up.t() * (scale * rank_scale))
        return out


def attach_loras(model: nn.Module, loras: Mapping[str, LoraWeights]) -> None:
    """Keep each LoRA unmerged under its name: the targeted linears become `LoraLinear` (scale 0
    until `set_lora_scales`). Only low-rank linear changes can stay unmerged."""
    modules = dict(model.named_modules())
    for adapter, lora in loras.items():
        for name, delta in lora.deltas.items():
            if delta.down is None or delta.diff is not None or delta.diff_b is not None:
                raise LoraError(f"{lora.source}: {name} needs merging (not a low-rank linear)")
            module = modules[name]
            if isinstance(module, nn.Linear):
                parent_name, _, child = name.rpartition(".")
                module = LoraLinear(module)
                setattr(modules[parent_name], child, module)
                modules[name] = module
            if not isinstance(module, LoraLinear):
                raise LoraError(f"{lora.source}: {name} is not a linear layer")
            module.adapters[adapter] = (
                delta.down.to(module.weight.device, module.weight.dtype),
                delta.up.to(module.weight.device, module.weight.dtype),
                delta.rank_scale,
            )


def set_lora_scales(model: nn.Module, scales: Mapping[str, float]) -> None:
    """The strength of each attached adapter for the next forwards (absent names: 0)."""
    for module in model.modules():
        if isinstance(module, LoraLinear):
            module.scales = {name: float(scales.get(name, 0.0)) for name in module.adapters}


def detach_lora(model: nn.Module, adapter: str) -> None:
    """Drop one attached adapter (`attach_loras`) from every `LoraLinear`; the wrappers stay."""
    for module in model.modules():
        if isinstance(module, LoraLinear):
            module.adapters.pop(adapter, None)
            module.scales.pop(adapter, None)


def parse_specs(values: Sequence[str]) -> list[LoraSpec]:
    """`FILE[:SCALE]` strings -> specs (the CLI's and the settings' spelling)."""
    return [LoraSpec.parse(v) for v in values]
