"""The leaderboard's bundled embedded-suite entries: made with the shipped model on the current
suite version, so anyone can re-run them on a CPU; the slow test does, and expects them within
their tolerance."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vqa_ood_bench.cli import main
from vqa_ood_bench.data.embedded.build import SUITE_VERSION
from vqa_ood_bench.models.tiny_artifact import artifact_key
from vqa_ood_bench.report.leaderboard import load_entries, read_entry

BOARD = Path(__file__).resolve().parents[1] / "vqa_ood_bench" / "leaderboards"


def _embedded_ids() -> list[str]:
    return sorted(e.entry_id for _, e in load_entries(BOARD) if e.suite == "embedded")


def test_bundled_embedded_entries_were_made_with_the_shipped_model() -> None:
    entries = [e for _, e in load_entries(BOARD) if e.suite == "embedded"]
    assert entries, "the leaderboard ships no embedded-suite entry to reproduce"
    for e in entries:
        assert e.config is not None and e.config["model"] == "tiny", e.entry_id
        # a model pre-trained on the submitter's machine would not be the one a re-run loads
        assert e.tiny_pretrain_steps is None and e.model_key == artifact_key(), e.entry_id
        assert e.suite_version == SUITE_VERSION and e.config.get("limit") is None, e.entry_id
        assert e.config.get("cpu_threads") == 2 and 0 < e.tolerance <= 2.0, e.entry_id
        assert e.predictions_sha256, e.entry_id  # added with `leaderboard add`, which re-scored them


@pytest.mark.slow
@pytest.mark.parametrize("entry_id", _embedded_ids())
def test_a_bundled_embedded_entry_reproduces_within_its_tolerance(entry_id: str, tmp_path: Path, capsys) -> None:
    board = tmp_path / "board"
    shutil.copytree(BOARD, board)
    rc = main(["leaderboard", "reproduce", entry_id, "--dir", str(board), "--out", str(tmp_path / "run")])
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    (path,) = [p for p, e in load_entries(board) if e.entry_id == entry_id]
    last = read_entry(path).reproductions[-1]
    assert last.all_within, last.diffs
    assert last.model_key == artifact_key()
