"""model/parallel: one clip on several gloo ranks equals one process.

One set of 4 spawned CPU processes (`parallel_ranks.equality_checks`) runs the tiny_1s preset
(i2v, 2 steps) single-process on rank 0 and then on every layout: CFG-parallel on 2 ranks,
sequence-parallel on 2 and on 3 ranks (uneven: 28 video and 33 audio tokens, 2 heads padded to
3), and CFG x SP on 4; plus the all-to-all attention against local attention and the row-split
VAE decode on 4 ranks.
"""

from __future__ import annotations

import time

import parallel_die
import parallel_ranks
import pytest

from model.config import FusionConfig
from model.options import RuntimeOptions
from model.parallel import RankFailed, launch
from model.parallel.groups import even_split, shard, shard_len
from model.parallel.volume import step_volume
from model.pipeline import OviPipeline

TOL = 1e-5


@pytest.fixture(scope="module")
def report() -> dict:
    return launch(parallel_ranks.equality_checks, world_size=4, timeout=300)


@pytest.mark.parametrize("layout", list(parallel_ranks.LAYOUTS))
def test_layout_equals_one_process(report: dict, layout: str) -> None:
    entry = report[layout]
    for key in ("latent_video", "latent_audio", "pixels", "audio"):
        assert entry[key] <= TOL, (layout, key, entry[key])
    assert entry["seed"]
    # uint8 frames: the float rounding above may move a pixel across a rounding boundary
    assert entry["frames_max_diff"] <= 1, entry
    if layout == "cfg2":  # the same kernels on the same shapes: bit for bit
        assert entry["latent_video"] == entry["latent_audio"] == entry["audio"] == 0.0


@pytest.mark.parametrize("layout", ["sp2", "sp3", "cfg2xsp2"])
def test_all_to_all_attention_equals_local_attention(report: dict, layout: str) -> None:
    entry = report[layout]
    assert entry["ulysses_equal"] and entry["gathered_equal"], entry
    assert entry["sharded_rel_l2"] <= 1e-6, entry  # fp32 softmax merge: rounding only


def test_row_split_vae_decode(report: dict) -> None:
    assert report["vae_split4"]["pixels"] <= TOL, report["vae_split4"]


def test_killed_rank_ends_the_group() -> None:
    started = time.monotonic()
    with pytest.raises(RankFailed, match="rank 1 died"):
        launch(parallel_die.die_in_collective, world_size=2, timeout=60, collective_timeout=60)
    assert time.monotonic() - started < 60  # ended by the death, not by a timeout


def test_shards_pad_and_bands_cover() -> None:
    import torch

    x = torch.arange(7.0)[None]
    parts = [shard(x, 1, 3, i) for i in range(3)]
    assert shard_len(7, 3) == 3
    assert torch.equal(torch.cat(parts, 1)[:, :7], x)
    assert torch.equal(parts[2], torch.tensor([[6.0, 0.0, 0.0]]))
    assert even_split(4, 3) == [(0, 2), (2, 3), (3, 4)]


def test_options_check_the_rank_count() -> None:
    assert RuntimeOptions(cfg_parallel=True, sp_degree=2).parallel_size == 4
    assert RuntimeOptions(cfg_parallel=True, world_size=2).parallel_size == 2
    with pytest.raises(ValueError, match="asks for 2"):
        RuntimeOptions(cfg_parallel=True, world_size=3)
    with pytest.raises(ValueError, match="asks for 3"):
        RuntimeOptions(sp_degree=3, gpus="0,1")
    with pytest.raises(ValueError, match="device numbers"):
        RuntimeOptions(gpus="a,b")


def test_pipeline_without_ranks_says_how_to_start_them() -> None:
    with pytest.raises(ValueError, match="--world-size 2"):
        OviPipeline.from_preset("tiny_1s", cfg_parallel=True)


def test_step_volume_at_704() -> None:
    lv, la = 31 * 22 * 22, 157  # 704x704x121: 15004 video tokens, 157 audio tokens
    one = step_volume(FusionConfig(), lv, la, cfg=1, sp=1)
    assert one.per_rank_bytes == 0
    sp = [step_volume(FusionConfig(), lv, la, cfg=1, sp=k) for k in (2, 4, 8)]
    # per layer and rank at sp 2: Ulysses, bf16, 4 (c_v + c_a) D / 2 elements, and the audio
    # side of the fusion attention: k/v and q shards (bf16) plus the fp32 softmax all-reduces
    cv, ca = shard_len(lv, 2), shard_len(la, 2)
    ulysses = 4 * (cv + ca) * 3072 * 0.5 * 2
    fusion = 3 * ca * 3072 * 2 + (2 * 24 + 3072) * 2 * ca * 4
    assert sp[0].per_layer_rank_bytes == pytest.approx(ulysses + fusion)
    assert 90e6 < ulysses < 95e6 and fusion < 4e6
    assert sp[0].total_bytes < sp[1].total_bytes < sp[2].total_bytes
