"""Every CLI mistake issue 17 lists is one `error:` line naming the value and the fix, exit code
2, before any model is built or any server starts. The test runs each mistake and checks the
table in `docs/mistakes.md` against what it printed (`OVI_UPDATE_DOCS=1` rewrites the table).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cli.main import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "mistakes.md"


@dataclass(frozen=True)
class Mistake:
    what: str
    argv: list[str]  # `DIR` stands for a fresh temporary folder
    setup: Callable[[Path], None] | None = None


def _file(name: str, text: str = "x") -> Callable[[Path], None]:
    def make(root: Path) -> None:
        (root / name).write_text(text)

    return make


SERVE = ["serve", "--preset", "tiny", "--data-dir", "DIR/data"]
GENERATE = ["generate", "--preset", "tiny", "--out", "DIR/clip.mp4"]

MISTAKES = [
    Mistake(
        "`--data-dir` that cannot be written",
        ["serve", "--preset", "tiny", "--data-dir", "DIR/a-file/data"],
        _file("a-file"),
    ),
    Mistake("`--tls-cert` of a missing file", [*SERVE, "--tls-cert", "DIR/no.pem", "--tls-key", "DIR/no-key.pem"]),
    Mistake("`--tls-cert` without `--tls-key`", [*SERVE, "--tls-cert", "DIR/cert.pem"], _file("cert.pem")),
    Mistake("`--port` out of range", [*SERVE, "--port", "99999"]),
    Mistake('`--api-key ""` (an unset variable)', [*SERVE, "--api-key", ""]),
    Mistake("`--device cuda` on a CPU-only torch", [*GENERATE, "--device", "cuda", "--prompt", "x"]),
    Mistake("`--device cuda` for the server's workers on a CPU-only torch", [*SERVE, "--device", "cuda"]),
    Mistake("`--steps 0`", [*GENERATE, "--steps", "0", "--prompt", "x"]),
    Mistake("an empty CSV for `batch`", ["batch", "DIR/empty.csv", "--out-dir", "DIR/out", "--preset", "tiny"], _file("empty.csv", "")),
    Mistake(
        "a `batch` row whose image is missing",
        ["batch", "DIR/p.csv", "--out-dir", "DIR/out", "--preset", "tiny"],
        _file("p.csv", "text_prompt,image_path\nwaves,\nbirds,frames/missing.png\n"),
    ),
    Mistake(
        "`make serve` offline (the weights step)",
        ["weights", "--variant", "720x720_5s", "--dir", "DIR/weights"],
    ),
    Mistake(
        "`ovi serve` of a real variant whose files are absent",
        ["serve", "--variant", "720x720_5s", "--weights-dir", "DIR/weights", "--data-dir", "DIR/data"],
    ),
]  # fmt: skip


@pytest.fixture
def nothing_heavy_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a model or starting a server is a test failure: every mistake must come first.
    (`cli.clips.load` is the CLI's one way to a model; `uvicorn.run` starts the server.)"""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built or a server started before the error")

    monkeypatch.setattr("cli.generate.load", refuse)
    monkeypatch.setattr("cli.batch.load", refuse)
    monkeypatch.setattr("uvicorn.run", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _run(mistake: Mistake, root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    if mistake.setup is not None:
        mistake.setup(root)
    argv = [arg.replace("DIR", str(root)) for arg in mistake.argv]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    return code, err.replace(str(root), "DIR")


def test_each_mistake_is_one_error_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nothing_heavy_starts: None
) -> None:
    if torch.cuda.is_available():
        pytest.skip("the --device cuda mistakes need a CPU-only torch")
    rows = []
    for i, mistake in enumerate(MISTAKES):
        root = tmp_path / str(i)
        root.mkdir()
        code, err = _run(mistake, root, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (mistake.what, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (mistake.what, err)
        assert "Traceback" not in err and "pydantic" not in err, mistake.what
        rows.append((mistake, lines[0]))
    table = render(rows)
    if os.environ.get("OVI_UPDATE_DOCS") == "1":
        DOC.write_text(table)
    assert DOC.read_text() == table, "docs/mistakes.md is stale: rerun with OVI_UPDATE_DOCS=1"


def render(rows: list[tuple[Mistake, str]]) -> str:
    out = [
        "# Mistakes and their messages",
        "",
        "Each row is run by `tests/cli/test_mistakes.py` (which also rewrites this table with",
        "`OVI_UPDATE_DOCS=1`): the command, and the one line it prints on stderr before exiting",
        "with code 2. No model is built and no server starts first. `DIR` is a scratch folder.",
        "",
        "| mistake | command | message |",
        "| --- | --- | --- |",
    ]
    for mistake, line in rows:
        command = " ".join(a if a and " " not in a else repr(a) for a in ["ovi", *mistake.argv])
        cell = line.replace("|", "\\|")
        out.append(f"| {mistake.what} | `{command}` | `` {cell} `` |")
    return "\n".join(out) + "\n"
