"""Conformance: MMAudio 16 kHz VAE decode/encode and BigVGAN v1 vocoder (`mmaudio/` case).

Loads both checkpoints through `load_audio_vae` / `load_vocoder` (the pipeline's path), float32
on CPU, then compares: mel_normalized, mel (VAE decode of `latent`), waveform_pre_tanh and
waveform (vocoder fed `vocoder_mel_input`), the chained vocoder(vae.decode(latent)), and the
encoder's mean / clamped logvar. A legacy-spelled vocoder file is also re-spelled to the
parametrization spelling and must give bit-identical output. When the case folder carries the
`effective_weights_*` debug files, the loaded (transformed) weights are compared with them too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from model.config import AudioVAEConfig, VocoderConfig
from model.convert.mmaudio import VAE_PREFIX, load_audio_vae, load_vocoder, respell_weight_norm
from model.loading import read_checkpoint

from . import THRESHOLD, Check, compare, exact, load_case_json, rel_l2

DTYPE = torch.float32
DEVICE = "cpu"


def _compare_weights(
    name: str, loaded: dict[str, torch.Tensor], path: Path, prefix: str = ""
) -> Check:
    """All tensors of an effective-weights file against the loaded module's state (worst rel_l2)."""
    reference = load_file(str(path))
    keys = {prefix + key for key in reference}
    if keys != set(loaded):
        missing, extra = sorted(keys - set(loaded)), sorted(set(loaded) - keys)
        return exact(
            name, False, f"key sets differ: file-only {missing[:4]}, module-only {extra[:4]}"
        )
    worst = max(rel_l2(loaded[prefix + key], ref) for key, ref in reference.items())
    return Check(name, worst < THRESHOLD, worst, f"{len(reference)} tensors, worst rel_l2")


@torch.no_grad()
def run(case_dir: Path) -> list[Check]:
    case_dir = Path(case_dir)
    case = load_case_json(case_dir)
    vae_config = AudioVAEConfig.from_official(case["vae_config"])
    vocoder_config = VocoderConfig.from_official(case["vocoder_config"])
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    ref = load_file(str(case_dir / "outputs.safetensors"))

    vae_path = case_dir / "weights.safetensors"
    vae = load_audio_vae(
        read_checkpoint(vae_path), vae_config, source=str(vae_path), dtype=DTYPE, device=DEVICE
    )
    vocoder_path = case_dir / "weights_vocoder.safetensors"
    vocoder_state = read_checkpoint(vocoder_path)
    vocoder = load_vocoder(
        vocoder_state, vocoder_config, source=str(vocoder_path), dtype=DTYPE, device=DEVICE
    )

    checks: list[Check] = []
    # 1. VAE decode: latent [1, 20, L] -> mel [1, 80, 2L]
    latent = inputs["latent"].to(DTYPE)
    mel_normalized = vae.decode_normalized(latent)
    mel = vae.denormalize(mel_normalized)
    checks.append(compare("mel_normalized", mel_normalized, ref["mel_normalized"]))
    checks.append(compare("mel", mel, ref["mel"]))

    # 2. Vocoder on the reference mel: [1, 80, T] -> [1, 1, T * hop]
    vocoder_mel = inputs["vocoder_mel_input"].to(DTYPE)
    waveform_pre_tanh = vocoder.forward_pre_tanh(vocoder_mel)
    waveform = vocoder(vocoder_mel)
    checks.append(compare("waveform_pre_tanh", waveform_pre_tanh, ref["waveform_pre_tanh"]))
    checks.append(compare("waveform", waveform, ref["waveform"]))

    # 3. Ovi's audio decode as the pipeline runs it
    checks.append(compare("chain.waveform", vocoder(vae.decode(latent)), ref["waveform"]))

    # 4. Encoder: mel [1, 80, T] -> mean, logvar [1, 20, T/2]
    mean, logvar = vae.encode(inputs["mel_for_encode"].to(DTYPE))
    checks.append(compare("encode_mean", mean, ref["encode_mean"]))
    checks.append(compare("encode_logvar_clamped", logvar, ref["encode_logvar_clamped"]))

    # 5. The other weight-norm spelling loads to the same outputs, bit for bit
    if any(key.endswith(".weight_g") for key in vocoder_state):
        respelled = load_vocoder(
            respell_weight_norm(vocoder_state),
            vocoder_config,
            source=f"{vocoder_path} (re-spelled to parametrizations)",
            dtype=DTYPE,
            device=DEVICE,
        )
        same = torch.equal(respelled(vocoder_mel), waveform)
        checks.append(exact("vocoder.parametrized_spelling_identical", same))

    # 6. Load-time transforms against the debug dumps, when the case ships them
    effective_vae = case_dir / "effective_weights_vae.safetensors"
    if effective_vae.is_file():
        checks.append(
            _compare_weights("effective_weights_vae", vae.state_dict(), effective_vae, VAE_PREFIX)
        )
    effective_vocoder = case_dir / "effective_weights_vocoder.safetensors"
    if effective_vocoder.is_file():
        checks.append(
            _compare_weights("effective_weights_vocoder", vocoder.state_dict(), effective_vocoder)
        )
    return checks
