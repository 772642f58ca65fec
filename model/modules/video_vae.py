"""The Wan2.2 video VAE: pixels [-1, 1] <-> the normalised 48-channel latents the DiT sees.

Shapes: video `[B, 3, T, H, W]` with T = 1 + 4k and H, W multiples of 16; latent
`[B, 48, 1 + (T - 1) // 4, H / 16, W / 16]`. The network is diffusers' `AutoencoderKLWan` in its
Wan2.2 form (residual up/down blocks, 2x2 pixel patchify, 12 in/out channels), which computes the
official `WanVAE_` including its causal chunking (frame 0 alone, then groups of 4 frames when
encoding; one latent frame at a time when decoding). What diffusers leaves out is added here:

* the per-channel latent statistics: latent = (mu - mean) / std after encoding (posterior mean,
  never a sample) and z * std + mean before decoding; `mean`/`std` are non-persistent buffers
  (constants of `WanVAEConfig`, not in the checkpoint);
* an unclamped decode: diffusers always clamps to [-1, 1]; `decode(..., clamp=False)` runs the
  same frame-by-frame decoder loop without that last step.

Decode memory (exact): the decoder runs one latent frame at a time (as diffusers does), and its
full-resolution tail (the up blocks after the last temporal upsampler, the output norm and conv)
runs `tail_frames` output frames at a time (default 1) with the causal-conv cache carried
between pieces; the pieces are unpatchified into one preallocated output. Every layer of that
tail is causal in time with a 3-frame kernel (or per frame), so the pixels are those of the
whole-chunk decode (`tests/model/test_video_vae.py` checks it) while the largest activations
shrink ~4x (`bench --sections memory`: est_vae_decode_act_gib). `tail_frames = None` runs
diffusers' own loop. Other memory knobs are diffusers': `enable_tiling(...)` (spatial tiles,
clamped decode only; blends seams, not exact) and `enable_slicing()` (one batch item at a time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import (
    WanCausalConv3d,
    WanResidualUpBlock,
    unpatchify,
)
from torch import nn

from ..config import WanVAEConfig


class VideoVAE(nn.Module):
    """Wan2.2 VAE with Ovi's latent normalisation; `self.vae` holds the checkpoint weights.

    One compute dtype, `dtype`: the weights' unless `compute_in_float32()` made it float32 with
    the weights left as they are (the official precision: bf16 weights, float32 math). Inputs
    are moved to it. The latent statistics stay float32 constants and are cast to the latent's
    dtype where they are applied.
    """

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        if len(config.latents_mean) != config.z_dim or len(config.latents_std) != config.z_dim:
            raise ValueError(f"latents_mean/latents_std must have z_dim={config.z_dim} entries")
        self.config = config
        # 1. the network: diffusers' Wan2.2 VAE (encoder, decoder, quant convs; the file's keys)
        self.vae = AutoencoderKLWan(
            base_dim=config.dim,
            decoder_base_dim=config.dec_dim,
            z_dim=config.z_dim,
            dim_mult=list(config.dim_mult),
            num_res_blocks=config.num_res_blocks,
            attn_scales=list(config.attn_scales),
            temperal_downsample=list(config.temporal_downsample),
            dropout=0.0,
            latents_mean=list(config.latents_mean),
            latents_std=list(config.latents_std),
            is_residual=True,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            patch_size=config.patch_size,
            scale_factor_temporal=config.temporal_compression,
            scale_factor_spatial=config.spatial_compression,
        )
        # 2. latent statistics: float32 constants of the config, never in the file
        self.register_buffer("latents_mean", torch.empty(config.z_dim), persistent=False)
        self.register_buffer("latents_std", torch.empty(config.z_dim), persistent=False)
        self.reset_latent_stats()
        # 3. decode memory: output frames per piece of the full-resolution tail (None: diffusers')
        self.tail_frames: int | None = 1
        # 4. compute precision: None = the weights' dtype (`compute_in_float32`)
        self.compute_dtype: torch.dtype | None = None
        # 5. decoder speed (exact; the fast path's `vae_channels_last` / `vae_compile`): the
        # decoder's 3-D convs in channels-last layout, and each norm + activation of the pieces'
        # decoder as one function that `compile_decoder` compiles (one fused kernel)
        self.channels_last = False
        self.norm_act: NormAct = norm_act

    def reset_latent_stats(self) -> None:
        """(Re)fill the float32 mean/std buffers from the config on the weights' device.

        Needed once after a meta-device build, whose buffers hold no values.
        """
        device = self._weight.device
        self.latents_mean = torch.tensor(
            self.config.latents_mean, dtype=torch.float32, device=device
        )
        self.latents_std = torch.tensor(self.config.latents_std, dtype=torch.float32, device=device)

    @property
    def _weight(self) -> torch.Tensor:
        """A weight whose dtype and device inputs are moved to."""
        return self.vae.post_quant_conv.weight

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: `compute_dtype`, else the weights'."""
        return self.compute_dtype or self._weight.dtype

    def compute_in_float32(self, enable: bool = True) -> None:
        """Encode and decode in float32 on the weights as stored (bf16 in the pipeline): the
        official release's float32 autocast around its bf16 VAE. Every conv casts its weight
        and bias to its input's dtype per call (one layer's float32 copy alive at a time), the
        norms promote their bf16 gains to the float32 activations; the values are those of a
        float32 VAE holding the bf16-rounded weights. `enable=False` undoes it."""
        for module in self.vae.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                module.__class__ = _upcasting(type(module)) if enable else _plain(type(module))
        self.compute_dtype = torch.float32 if enable else None

    @property
    def device(self) -> torch.device:
        return self._weight.device

    # --- decoder speed (exact) -------------------------------------------------------------

    def use_channels_last(self, enable: bool = True) -> None:
        """The decoder's 3-D conv weights (and the activations of the pieces' decode) in
        `torch.channels_last_3d` layout (cuDNN's fast path for 3-D convs); same values to
        float rounding. `enable=False` undoes it."""
        layout = torch.channels_last_3d if enable else torch.contiguous_format
        for module in (self.vae.post_quant_conv, *self.vae.decoder.modules()):
            if isinstance(module, nn.Conv3d):
                module.weight.data = module.weight.data.contiguous(memory_format=layout)
        self.channels_last = enable

    def compile_decoder(
        self, enable: bool = True, *, backend: Any = "inductor", mode: str | None = None
    ) -> None:
        """Compile the pieces' decoder's norm + activation pairs (`norm_act`: RMS norm then
        SiLU, memory-bound, one fused kernel) with `torch.compile`; the convs and their causal
        cache stay eager. `enable=False` undoes it. Pieces' decode only (`tail_frames` set)."""
        self.norm_act = torch.compile(norm_act, backend=backend, mode=mode) if enable else norm_act

    # --- memory knobs (diffusers') ---------------------------------------------------------

    def enable_tiling(self, **kwargs: int | float | None) -> None:
        """Spatial tiling (diffusers' `enable_tiling` arguments); the clamped decode only."""
        self.vae.enable_tiling(**kwargs)

    def disable_tiling(self) -> None:
        self.vae.use_tiling = False

    def enable_slicing(self) -> None:
        """Encode/decode one batch item at a time."""
        self.vae.use_slicing = True

    def disable_slicing(self) -> None:
        self.vae.use_slicing = False

    # --- latent statistics -----------------------------------------------------------------

    # Ovi scales by the reciprocal 1/std (and divides by it to undo); doing the same keeps this
    # step bit-identical to the official wrapper rather than within one rounding of it.
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)  # broadcast over [B, C, F, H, W]
        mean = self.latents_mean.to(like.device, like.dtype).view(shape)
        inv_std = (1.0 / self.latents_std).to(like.device, like.dtype).view(shape)
        return mean, inv_std

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """Posterior mean -> DiT latent: (mu - mean) / std."""
        mean, inv_std = self._stats(mu)
        return (mu - mean) * inv_std

    def denormalize(self, latent: torch.Tensor) -> torch.Tensor:
        """DiT latent -> decoder input: latent * std + mean."""
        mean, inv_std = self._stats(latent)
        return latent / inv_std + mean

    # --- encode ----------------------------------------------------------------------------

    def _check_pixels(self, video: torch.Tensor) -> None:
        step = self.config.spatial_compression
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, T, H, W], got {list(video.shape)}")
        if video.shape[-2] % step or video.shape[-1] % step:
            raise ValueError(f"video H and W must be multiples of {step}, got {list(video.shape)}")

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1] -> latent [B, z, 1 + (T-1)//4, H/16, W/16].

        The posterior mean, normalised to (mu - mean) / std unless `normalize=False`.
        """
        self._check_pixels(video)
        # 1. the network's posterior mean, in the weight dtype
        mu = self.vae.encode(video.to(self.device, self.dtype)).latent_dist.mean
        # 2. latent statistics
        return self.normalize(mu) if normalize else mu

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] or [B, 3, 1, H, W] in [-1, 1] -> latent [B, z, 1, H/16, W/16]."""
        if image.ndim == 4:
            image = image.unsqueeze(2)  # [B, 3, 1, H, W]
        if image.ndim != 5 or image.shape[2] != 1:
            raise ValueError(
                f"image must be [B, 3, H, W] or [B, 3, 1, H, W], got {list(image.shape)}"
            )
        return self.encode(image)

    # --- decode ----------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        """Normalised latent [B, z, F, h, w] -> video [B, 3, 1 + 4(F-1), 16h, 16w].

        `clamp=True` (Ovi's output) clips to [-1, 1]; `clamp=False` returns the decoder's raw
        values (no tiling on that path). Decoded in pieces (`tail_frames`, module docstring):
        the values of diffusers' decode, in far less memory.
        """
        self._check_latent(latent)
        # 2. latent statistics (undone), then 1. the network's decoder
        z = self.denormalize(latent.to(self.device, self.dtype))
        if self.vae.use_tiling:
            if not clamp:
                raise ValueError("an unclamped decode cannot be tiled; call disable_tiling() first")
            return self.vae.decode(z).sample
        if self.tail_frames is None:  # diffusers' own loop (the reference for the pieces)
            return self.vae.decode(z).sample if clamp else self._decode_stock_unclamped(z)
        b, _, num_latent, h, w = z.shape
        t_out = 1 + self.config.temporal_compression * (num_latent - 1)
        s = self.config.spatial_compression
        out = torch.empty(b, 3, t_out, h * s, w * s, device=z.device, dtype=z.dtype)

        def write(frame: int, piece: torch.Tensor, rows: slice) -> None:
            out[rows, :, frame : frame + piece.shape[2]] = (
                piece.clamp(-1.0, 1.0) if clamp else piece
            )

        for item in range(b):  # one batch item at a time (the cache is per clip)
            self._decode_in_pieces(
                z[item : item + 1], lambda f, p, i=item: write(f, p, slice(i, i + 1))
            )
        return out

    def _decode_stock_unclamped(self, z: torch.Tensor) -> torch.Tensor:
        """diffusers' decode loop minus its final clamp: one latent frame at a time through
        its own decoder, with a causal-conv cache carried across frames."""
        decoder = self.vae.decoder
        cache: list[Any] = [None] * sum(isinstance(m, WanCausalConv3d) for m in decoder.modules())
        x = self.vae.post_quant_conv(z)
        frames = []
        for i in range(x.shape[2]):
            cursor = [0]  # index of the next causal conv into `cache`, advanced by the decoder
            frames.append(
                decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=cursor, first_chunk=i == 0)
            )
        out = torch.cat(frames, dim=2)  # [B, 12, T, h*8, w*8]
        return unpatchify(out, patch_size=self.config.patch_size)  # [B, 3, T, 16h, 16w]

    @torch.no_grad()
    def decode_uint8(
        self, latent: torch.Tensor, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Normalised latent [B, z, F, h, w] -> the 8-bit frames [B, T, 16h, 16w, 3] (uint8) on
        `device` (default: the latent's), each piece converted as soon as it is decoded by
        `to_uint8` (the official truncation). With a
        host `device` the decoded video never sits on the GPU whole (pinned host memory,
        asynchronous copies, synchronised before returning). On `meta` nothing is copied."""
        self._check_latent(latent)
        z = self.denormalize(latent.to(self.device, self.dtype))
        b, _, num_latent, h, w = z.shape
        t_out = 1 + self.config.temporal_compression * (num_latent - 1)
        s = self.config.spatial_compression
        device = torch.device(device) if device is not None else z.device
        pin = device.type == "cpu" and z.device.type == "cuda"
        out = torch.empty(b, t_out, h * s, w * s, 3, dtype=torch.uint8, device=device,
                          pin_memory=pin)  # fmt: skip

        def write(frame: int, piece: torch.Tensor, rows: slice = slice(None)) -> None:
            """piece [b, 3, n, H, W] -> uint8 frames out[rows, frame : frame + n]."""
            pixels = to_uint8(piece).permute(0, 2, 3, 4, 1)
            if pixels.device.type != "meta" or device.type == "meta":
                out[rows, frame : frame + pixels.shape[1]].copy_(pixels, non_blocking=pin)

        if self.tail_frames is None or self.vae.use_tiling:
            write(0, self.vae.decode(z).sample)
        else:
            for item in range(b):  # one batch item at a time (the cache is per clip)
                self._decode_in_pieces(
                    z[item : item + 1], lambda f, p, i=item: write(f, p, rows=slice(i, i + 1))
                )
        if pin:
            torch.cuda.current_stream(z.device).synchronize()
        return out

    def _check_latent(self, latent: torch.Tensor) -> None:
        if latent.ndim != 5 or latent.shape[1] != self.config.z_dim:
            raise ValueError(
                f"latent must be [B, {self.config.z_dim}, F, h, w], got {list(latent.shape)}"
            )

    def _decode_in_pieces(
        self, z: torch.Tensor, write: Callable[[int, torch.Tensor], None],
        tail_frames: int | None = -1,
    ) -> int:  # fmt: skip
        """One latent frame at a time, with a causal-conv cache carried across frames (as
        diffusers decodes); after each temporal upsampler the frames go on in pieces of
        `tail_frames` (-1: `self.tail_frames`; None: whole). Each decoded piece [B, 3, n, H, W]
        goes to `write(first_frame, piece)`; returns the number of frames written.
        z: [B, z, F, h, w] (denormalised), frames 1 + 4(F-1) of 16h x 16w."""
        tail_frames = self.tail_frames if tail_frames == -1 else tail_frames
        decoder = self.vae.decoder
        if not all(isinstance(b, WanResidualUpBlock) for b in decoder.up_blocks):
            raise ValueError("piecewise decoding needs the Wan2.2 (residual) decoder blocks")
        cache: list[Any] = [None] * sum(isinstance(m, WanCausalConv3d) for m in decoder.modules())
        x = self.vae.post_quant_conv(z)  # [B, z, F, h, w]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        written = [0]  # output frames written so far
        for i in range(z.shape[2]):
            cursor = [0]  # next causal conv's slot in `cache`, advanced by every causal conv
            y = _causal_conv(decoder.conv_in, x[:, :, i : i + 1], cache, cursor)
            y = decoder.mid_block(y, feat_cache=cache, feat_idx=cursor)
            self._up_and_out(0, y, cache, cursor, i == 0, tail_frames, write, written)
        return written[0]

    def _up_and_out(
        self,
        first_block: int,
        y: torch.Tensor,
        cache: list,
        cursor: list[int],
        first: bool,
        tail_frames: int | None,
        write: Callable[[int, torch.Tensor], None],
        written: list[int],
    ) -> None:
        """Up blocks from `first_block`, the head, unpatchify, then `write`. Whenever a block
        leaves more than `tail_frames` frames, the rest runs once per piece of frames, each piece
        through the same causal convs (the cursor rewound): every layer from here is per frame
        or causal in time, so the values are those of the whole. y: [B, C, n, h', w']."""
        decoder = self.vae.decoder
        blocks = decoder.up_blocks
        for k in range(first_block, len(blocks)):
            y = _lean_up_block(blocks[k], y, cache, cursor, first, self.norm_act)
            if tail_frames is not None and y.shape[2] > tail_frames and k + 1 < len(blocks):
                start = cursor[0]
                for piece in y.split(tail_frames, dim=2):
                    cursor[0] = start
                    self._up_and_out(k + 1, piece, cache, cursor, first, tail_frames, write,
                                     written)  # fmt: skip
                return
        y = self.norm_act(decoder.norm_out, decoder.nonlinearity, y)
        y = _lean_conv(decoder.conv_out, y, cache, cursor)
        y = unpatchify(y, patch_size=self.config.patch_size)  # [B, 3, n, 16h', 16w']
        write(written[0], y)
        written[0] += y.shape[2]


class _UpcastingConv:
    """Mixin for a conv class: weight and bias cast to the input's dtype at each call."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        bias = None if bias is None else bias.to(input.dtype)
        return super()._conv_forward(input, weight.to(input.dtype), bias)  # type: ignore[misc]


_UPCASTING: dict[type, type] = {}


def _upcasting(cls: type) -> type:
    """The upcasting subclass of conv class `cls` (made once per class)."""
    if issubclass(cls, _UpcastingConv):
        return cls
    if cls not in _UPCASTING:
        _UPCASTING[cls] = type(f"Upcasting{cls.__name__}", (_UpcastingConv, cls), {})
    return _UPCASTING[cls]


def _plain(cls: type) -> type:
    """`cls` without the upcasting mixin."""
    return next((base for base, up in _UPCASTING.items() if up is cls), cls)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Decoded pixels in [-1, 1] (any float dtype) -> uint8, as the official release converts:
    clamp, then ((x + 1) / 2 * 255) in float32 truncated (numpy's `astype(uint8)`), not
    rounded; a value lands one lower than rounding would about half the time."""
    x = pixels.float().clamp(-1.0, 1.0)
    return ((x + 1) / 2 * 255).to(torch.uint8)  # float -> uint8 truncates toward zero


def _lean_conv(
    conv: WanCausalConv3d, x: torch.Tensor, cache: list, cursor: list[int]
) -> torch.Tensor:
    """The pieces' causal conv: the values of `_causal_conv` with fewer copies alive.

    Its cache slot holds the last `past` (2) frames of the zero-front-padded input stream as a
    list of one-frame tensors (zeros at the start: diffusers' causal padding), taken from the
    inputs themselves (no clone unless x has more frames than that); the input is joined to
    them once, and the conv pads space itself (no padded copy).
    x: [B, C, n, H, W] -> [B, C', n, H, W]."""
    idx = cursor[0]
    cursor[0] += 1
    past = conv._padding[4]  # frames of causal history the kernel reads (2)
    if not past:
        return conv(x)
    prev: list[torch.Tensor] = cache[idx] or [x.new_zeros(*x.shape[:2], 1, *x.shape[3:])] * past
    frames = [*prev, *x.split(1, dim=2)]  # one-frame views
    keep = frames[-past:]
    if x.shape[2] > past:  # views into a long x would keep all of it alive
        keep = [f.clone() for f in keep]
    cache[idx] = None
    inp = torch.cat([*prev, x], dim=2)  # [B, C, past + n, H, W]
    del prev, frames
    pad = (0, conv._padding[2], conv._padding[0])  # (time, rows, columns): time is in `inp`
    weight = conv.weight.to(inp.dtype)  # a no-op unless computing above the weights' dtype
    bias = None if conv.bias is None else conv.bias.to(inp.dtype)
    y = F.conv3d(inp, weight, bias, conv.stride, pad, conv.dilation, conv.groups)
    cache[idx] = keep
    return y


NormAct = Callable[[nn.Module, nn.Module, torch.Tensor], torch.Tensor]


def norm_act(norm: nn.Module, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """act(norm(x)): the memory-bound pair before each decoder conv (`compile_decoder`)."""
    return act(norm(x))


def _lean_resnet(
    block: nn.Module, x: torch.Tensor, cache: list, cursor: list[int], na: NormAct = norm_act
) -> torch.Tensor:
    """diffusers' `WanResidualBlock` with `_lean_conv`: conv2(act(norm2(conv1(act(norm1(x))))))
    + shortcut(x) (dropout is 0: the identity); `na` computes each act(norm(.))."""
    y = _lean_conv(block.conv1, na(block.norm1, block.nonlinearity, x), cache, cursor)
    y = _lean_conv(
        block.conv2, block.dropout(na(block.norm2, block.nonlinearity, y)), cache, cursor
    )
    return y.add_(block.conv_shortcut(x))  # the shortcut last: not alive during the convs


def _lean_up_block(
    block: WanResidualUpBlock,
    x: torch.Tensor,
    cache: list,
    cursor: list[int],
    first: bool,
    na: NormAct = norm_act,
) -> torch.Tensor:
    """diffusers' `WanResidualUpBlock` with `_lean_resnet`: resnets, the upsampler (its temporal
    conv, if any, keeps diffusers' cache protocol), plus the duplicated-input shortcut added in
    place; no clone of x (nothing writes into it)."""
    y = x
    for resnet in block.resnets:
        y = _lean_resnet(resnet, y, cache, cursor, na)
    if block.upsampler is not None:
        y = block.upsampler(y, feat_cache=cache, feat_idx=cursor)
    if block.avg_shortcut is not None:
        y = y.add_(block.avg_shortcut(x, first_chunk=first))
    return y


def _causal_conv(
    conv: WanCausalConv3d, x: torch.Tensor, cache: list, cursor: list[int]
) -> torch.Tensor:
    """A causal conv with the decoder's cache protocol: it sees the last two frames it was
    given before (zero frames at the start) and keeps its input's last two frames."""
    idx = cursor[0]
    keep = x[:, :, -2:].clone()
    if keep.shape[2] < 2 and cache[idx] is not None:
        keep = torch.cat([cache[idx][:, :, -1:].to(keep.device), keep], dim=2)
    y = conv(x, cache[idx])
    cache[idx] = keep
    cursor[0] += 1
    return y
