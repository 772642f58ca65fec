"""bench/parallel.py: the communication estimate printed on any machine."""

from bench.parallel import SHAPE, estimates, layouts
from model.config import FusionConfig


def test_estimates_cover_2_4_8_ranks_at_704() -> None:
    assert SHAPE.label == "704x704x121"
    rows = estimates(FusionConfig())
    assert [(r["ranks"], r["cfg"], r["sp"]) for r in rows] == [
        (2, 1, 2), (2, 2, 1), (4, 1, 4), (4, 2, 2), (8, 1, 8), (8, 2, 4),
    ]  # fmt: skip
    for row in rows:
        assert 0 < row["per_rank_gb_per_step"] <= row["total_gb_per_step"]
        assert 1 < row["est_speedup"] <= row["ranks"]
    cfg_only = rows[1]
    assert cfg_only["per_rank_gb_per_step"] < 0.02  # only the fp32 predictions cross
    assert layouts(3) == [(1, 3)]
