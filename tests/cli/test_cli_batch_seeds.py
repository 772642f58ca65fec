"""`ovi batch` seeds: the official `inference.py` scheme (issue 12)."""

from cli.batch import item_seed


def test_repeat_k_of_every_row_gets_seed_plus_k() -> None:
    # every row's k-th clip uses S + k: a row's clips are the official script's for that prompt
    assert [item_seed(100, k) for k in range(3)] == [100, 101, 102]
    assert item_seed(-1, 1) == 0  # negative seeds are seeds too
    assert item_seed(None, 2) is None  # no --seed: each clip draws its own (and reports it)
