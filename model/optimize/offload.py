"""Memory modes: component offload and block offload (README: memory table).

- `ComponentOffload` (`RuntimeOptions.cpu_offload`, `offload_text_encoder`): a component lives in
  host memory and visits the compute device while it runs.
- `BlockOffload` (`RuntimeOptions.block_offload`): the fusion DiT's layers stream from pinned
  host memory into two device slots, one layer ahead, on a side stream.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from ..modules.fusion import FusionModel

_ALIGN_BYTES = 256


def _layout(params: list[nn.Parameter]) -> tuple[list[int], int]:
    """Byte offsets of each parameter in one flat buffer (256-byte aligned), and its size."""
    offsets, size = [], 0
    for p in params:
        offsets.append(size)
        size += -(-p.numel() * p.element_size() // _ALIGN_BYTES) * _ALIGN_BYTES
    return offsets, size


def _views(
    flat: torch.Tensor, params: list[nn.Parameter], offsets: list[int]
) -> list[torch.Tensor]:
    """Views of a flat uint8 buffer shaped and typed like `params`."""
    return [
        flat[o : o + p.numel() * p.element_size()].view(p.dtype).view(p.shape)
        for p, o in zip(params, offsets, strict=True)
    ]


class BlockOffload:
    """Keep the fusion layers' weights in host memory and stream them to the device per layer.

    Each layer (video block i + audio block i) lives in one flat host buffer (pinned on CUDA),
    and two flat device slots hold the layer computing now and the next one: while layer i
    computes on the current stream, a side stream copies layer i+1 into the other slot. After
    layer i the parameters point back at the host copy, so `state_dict()` between forwards
    reads valid (host) tensors. Everything outside the blocks (embeddings, heads) moves to the
    device. On a CPU "device" there is no side stream: the copies are plain synchronous ones,
    so the bookkeeping can be tested there for exact equality.

    Device memory for the weights: the non-block weights plus two layers (full Ovi, bf16:
    ~1.5 GB + 2 x ~0.73 GB) instead of ~23 GB.
    """

    def __init__(self, model: FusionModel, device: torch.device | str) -> None:
        self.model = model
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        pairs = zip(model.video_model.blocks, model.audio_model.blocks, strict=True)
        self.params = [list(vb.parameters()) + list(ab.parameters()) for vb, ab in pairs]
        signature = [(p.shape, p.dtype) for p in self.params[0]]
        if any([(p.shape, p.dtype) for p in ps] != signature for ps in self.params):
            raise ValueError("block offload needs every layer to hold the same parameter layout")
        self.offsets, self.layer_bytes = _layout(self.params[0])
        block_ids = {id(p) for ps in self.params for p in ps}
        # 1. everything outside the blocks (and all buffers, e.g. fp8 scales) to the device
        for module in model.modules():
            for p in module.parameters(recurse=False):
                if id(p) not in block_ids:
                    p.data = p.data.to(self.device)
            for name, buf in module.named_buffers(recurse=False):
                module._buffers[name] = buf.to(self.device)
        # 2. layer weights -> flat host buffers (the device copies are freed as we go)
        self.host_flat: list[torch.Tensor] = []
        self.host: list[list[torch.Tensor]] = []
        self.registered: list[bool] = []  # page-locked with cudaHostRegister (to unregister)
        for ps in self.params:
            flat, registered = torch.empty(self.layer_bytes, dtype=torch.uint8), False
            if self.cuda:
                flat, registered = _pin(flat)
            views = _views(flat, ps, self.offsets)
            for p, view in zip(ps, views, strict=True):
                view.copy_(p.data)
                p.data = view
            self.host_flat.append(flat)
            self.host.append(views)
            self.registered.append(registered)
        # 3. two device slots and the copy stream
        self.slot_flat = [
            torch.empty(self.layer_bytes, dtype=torch.uint8, device=self.device) for _ in range(2)
        ]
        self.slots = [_views(flat, self.params[0], self.offsets) for flat in self.slot_flat]
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.order: list[int] = []
        self.position: dict[int, int] = {}
        self.ready: dict[int, torch.cuda.Event | None] = {}  # layer -> copy-done event
        model.offload = self

    # --- the LayerWeights protocol (called by FusionModel._forward) -------------------------

    def begin(self, layers: list[int]) -> None:
        self.order = list(layers)
        self.position = {layer: k for k, layer in enumerate(self.order)}
        self.ready = {}
        if self.order:
            self._copy(self.order[0])

    def fetch(self, i: int) -> None:
        if i not in self.ready:  # not prefetched (e.g. called out of order): copy now
            self._copy(i)
        event = self.ready.pop(i)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        slot = self.slots[self.position[i] % 2]
        for p, dev in zip(self.params[i], slot, strict=True):
            p.data = dev
        k = self.position[i] + 1
        if k < len(self.order):  # prefetch the next layer into the other slot
            self._copy(self.order[k])

    def release(self, i: int) -> None:
        for p, host in zip(self.params[i], self.host[i], strict=True):
            p.data = host

    # --- internals ------------------------------------------------------------------------

    def _copy(self, i: int) -> None:
        dst = self.slot_flat[self.position[i] % 2]
        if self.stream is None:
            dst.copy_(self.host_flat[i])
            self.ready[i] = None
            return
        # the slot was last read by the layer two before; that compute is already queued
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            dst.copy_(self.host_flat[i], non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.ready[i] = event

    def disable(self) -> FusionModel:
        """Put every layer's weights back on the device (needs the memory) and detach."""
        if self.stream is not None:
            self.stream.synchronize()
        for ps, hosts in zip(self.params, self.host, strict=True):
            for p, host in zip(ps, hosts, strict=True):
                p.data = host.to(self.device, copy=True)
        for flat, registered in zip(self.host_flat, self.registered, strict=True):
            if registered:
                torch.cuda.cudart().cudaHostUnregister(flat.data_ptr())
        self.host_flat, self.host, self.slot_flat, self.slots = [], [], [], []
        self.model.offload = None
        return self.model


def _pin(flat: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Page-lock a host buffer in place with cudaHostRegister (no power-of-two rounding, unlike
    the caching pinned allocator), else fall back to a pinned copy. -> (buffer, registered)."""
    try:
        if int(torch.cuda.cudart().cudaHostRegister(flat.data_ptr(), flat.numel(), 0)) == 0:
            return flat, True
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the build
        pass
    return flat.pin_memory(), False  # pragma: no cover


def enable_block_offload(model: FusionModel, device: torch.device | str) -> BlockOffload:
    """Stream the layers' weights from host memory (see `BlockOffload`); `.disable()` undoes."""
    if model.offload is not None:
        raise ValueError("block offload is already enabled on this model")
    return BlockOffload(model, device)


@contextlib.contextmanager
def visit_device(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Component offload: a module kept in host memory visits `device` for the block's length.

    The host tensors are kept and only read: the visit copies them in, and afterwards the
    parameters point back at them, so the device copies are freed with no copy back (the
    weights never change during inference)."""
    tensors = [*module.parameters(), *module.buffers()]
    host = [t.data for t in tensors]
    if device.type == "cuda" and module not in _PINNED:
        pin_host_tensors(host)  # once per module: later visits copy by DMA, asynchronously
        _PINNED.add(module)
    for t, h in zip(tensors, host, strict=True):
        t.data = h.to(device, non_blocking=h.is_pinned())  # stream-ordered before its use
    try:
        yield
    finally:
        for t, h in zip(tensors, host, strict=True):
            t.data = h


_PINNED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # modules whose host copy is pinned


def pin_host_tensors(tensors: list[torch.Tensor]) -> int:
    """Page-lock host tensors' storages in place (cudaHostRegister; no copy, no rounding), so
    host-to-device copies run by DMA without a staging copy. A storage that cannot be
    registered stays pageable (copies still work, synchronously). CUDA only; returns the bytes
    pinned. The registration lasts as long as the process (the host copy is kept for reuse)."""
    if not torch.cuda.is_available():
        return 0
    seen: set[int] = set()
    pinned = 0
    for t in tensors:
        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if t.device.type != "cpu" or not size or ptr in seen or t.is_pinned():
            continue
        seen.add(ptr)
        try:
            ok = int(torch.cuda.cudart().cudaHostRegister(ptr, size, 0)) == 0
        except (AttributeError, RuntimeError):  # pragma: no cover - depends on the build
            ok = False
        pinned += size if ok else 0
    return pinned
