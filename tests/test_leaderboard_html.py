"""The static leaderboard page: every entry's row and dot, no network, and (with chromium) sorting that works."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from vqa_ood_bench.cli import main
from vqa_ood_bench.report.leaderboard import load_entries

REPO = Path(__file__).resolve().parents[1]
BOARD = REPO / "vqa_ood_bench" / "leaderboards"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


class PageIndex(HTMLParser):
    """Rows (entry id, numbers per data-key) per table, dots per scatter, and any external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[dict]] = {}
        self.keys: dict[str, list[str]] = {}
        self.groups: dict[str, tuple[list[dict], list[str]]] = {}  # data-group -> (rows, keys): one table each
        self.dots: set[str] = set()
        self.external: list[str] = []
        self.body: dict[str, str] = {}
        self._suite = self._row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for name in ("src", "href"):
            if a.get(name, "").startswith(("http:", "https:", "//")):
                self.external.append(a[name])
        if tag == "link":
            self.external.append(str(a))
        if tag == "body":
            self.body = a
        if tag == "table" and "data-suite" in a:
            self._suite = a["data-suite"]
            self.tables[self._suite], self.keys[self._suite] = [], []
            self.groups[a.get("data-group")] = (self.tables[self._suite], self.keys[self._suite])
        elif tag == "th" and self._suite:
            self.keys[self._suite].append(a.get("data-key"))
        elif tag == "tr" and self._suite and "data-entry" in a:
            self._row = {"entry": a["data-entry"], "cells": []}
            self.tables[self._suite].append(self._row)
        elif tag == "td" and self._row is not None:
            self._row["cells"].append(a.get("data-v"))
        elif tag == "circle" and "data-entry" in a:
            self.dots.add(a["data-entry"])

    def handle_endtag(self, tag):
        if tag == "table":
            self._suite = None
        if tag == "tr":
            self._row = None

    def column(self, suite: str, key: str) -> list:
        i = self.keys[suite].index(key)
        return [None if not r["cells"][i] else float(r["cells"][i]) for r in self.tables[suite]]


def parse(text: str) -> PageIndex:
    p = PageIndex()
    p.feed(text)
    return p


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html") / "leaderboard.html"
    assert main(["leaderboard", "html", "--dir", str(BOARD), "--out", str(out)]) == 0
    return out


def test_page_lists_every_entry_in_its_suite_sorted_by_ood(page: Path) -> None:
    index = parse(page.read_text(encoding="utf-8"))
    entries = [e for _, e in load_entries(BOARD)]
    for e in entries:
        assert e.entry_id in {r["entry"] for r in index.tables[e.suite]}, e.entry_id
        if e.averages.id is not None and e.averages.ood is not None:
            assert e.entry_id in index.dots
    assert sum(len(rows) for rows in index.tables.values()) == len(entries)
    for suite, rows in index.tables.items():
        ood = index.column(suite, "ood")
        assert ood == sorted(ood, reverse=True), suite
        # the numbers in the page are the entries' numbers
        by_id = {e.entry_id: e for e in entries}
        for row, value in zip(rows, ood):
            assert value == pytest.approx(by_id[row["entry"]].averages.ood, abs=1e-6)
    assert index.external == []  # self-contained: no scripts, styles or fonts from elsewhere
    assert index.body.get("data-sort-check") == "pending"  # set by the script when a browser runs it


def test_variants_get_their_own_table_and_entry_text_is_escaped() -> None:
    """Two variants of one suite: two tables, each sorted by OOD on its own; submitted text never becomes markup."""
    from vqa_ood_bench.report.leaderboard import entry_from_results
    from vqa_ood_bench.report.leaderboard_html import render_html

    from test_leaderboard import fake_results

    attack = "<script>alert(1)</script>"
    specs = {"lav-hi": ("lavis", (80.0, 70.0, 40.0)), "off-hi": ("official", (80.0, 60.0, 40.0)),  # OOD averages 55, 50
             "lav-lo": ("lavis", (80.0, 50.0, 30.0)), "off-lo": ("official", (80.0, 40.0, 30.0))}  # 40, 35
    entries = [entry_from_results(fake_results(values=values), entry_id=entry_id).model_copy(update={"variant": variant})
               for entry_id, (variant, values) in specs.items()]
    entries[0] = entries[0].model_copy(update={"method": attack, "backbone": attack, "notes": [attack]})
    text = render_html(entries)
    index = parse(text)
    assert set(index.groups) == {"paper-vqa · VQA accuracy (lavis)", "paper-vqa · VQA accuracy (official)"}
    for group, want in (("paper-vqa · VQA accuracy (lavis)", ["lav-hi", "lav-lo"]), ("paper-vqa · VQA accuracy (official)", ["off-hi", "off-lo"])):
        rows, keys = index.groups[group]
        assert [r["entry"] for r in rows] == want
        assert [float(r["cells"][keys.index("ood")]) for r in rows] == sorted((float(r["cells"][keys.index("ood")]) for r in rows), reverse=True)
        assert f"<h2>VQAv2 → near / far OOD (paper-vqa) · {group.split(' · ', 1)[1]}</h2>" in text  # the group named in the title
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>alert" not in text
    assert index.groups["paper-vqa · VQA accuracy (lavis)"][0][0]["cells"][0] == attack  # escaped in the page, the text itself in the DOM


def run_chromium(*args: str) -> str:
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
@pytest.mark.parametrize("key, order", [("id", "asc"), ("ood", "asc"), ("method", "asc")])
def test_headless_chromium_runs_the_sorting_script(page: Path, key: str, order: str) -> None:
    dom = run_chromium("--virtual-time-budget=3000", "--dump-dom", f"{page.resolve().as_uri()}?sort={key}&order={order}")
    index = parse(dom)
    assert index.body.get("data-sort-check") == "passed", index.body
    assert index.body.get("data-sorted-by") == f"{key}:{order}"
    entries = [e for _, e in load_entries(BOARD)]
    assert {r["entry"] for rows in index.tables.values() for r in rows} == {e.entry_id for e in entries}
    for suite in index.tables:
        i = index.keys[suite].index(key)
        if key == "method":
            got = [r["cells"][i].lower() for r in index.tables[suite]]
            assert got == sorted(got), suite
            continue
        got = index.column(suite, key)
        present = [v for v in got if v is not None]
        assert present == sorted(present) and got[: len(present)] == present, suite  # ascending, missing last


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_headless_chromium_screenshot(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    run_chromium("--hide-scrollbars", f"--screenshot={shot}", "--window-size=1400,1800", page.resolve().as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a rendered page, not a blank one
