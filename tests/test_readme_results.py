"""The README's results paragraph is generated from the committed default-tier report, so the two cannot disagree."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.report import README_END, README_START

REPO = Path(__file__).resolve().parent.parent


def readme_block(tier: str) -> str:
    text = (REPO / "README.md").read_text()
    start, end = README_START.format(tier=tier), README_END.format(tier=tier)
    assert start in text and end in text, f"README.md has no generated results block for tier {tier}"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_readme_results_equal_the_committed_report_summary():
    summary = REPO / "results" / "cpu" / "summary.md"
    if not summary.is_file():
        pytest.fail("results/cpu/summary.md is missing: run `python -m analysis.report ... --readme README.md`")
    assert readme_block("cpu") == summary.read_text().strip(), (
        "README.md's results block differs from results/cpu/summary.md; regenerate it with "
        "`python -m analysis.report --index results/cpu/analysis/runs.json --tables results/cpu/tables "
        "--out results/cpu/report.md --readme README.md`"
    )


def test_update_readme_replaces_only_the_block(tmp_path):
    from analysis.report import update_readme

    readme = tmp_path / "README.md"
    start, end = README_START.format(tier="cpu"), README_END.format(tier="cpu")
    readme.write_text(f"intro\n{start}\nold text\n{end}\noutro\n")
    assert update_readme(readme, "cpu", "new text\n")
    assert readme.read_text() == f"intro\n{start}\nnew text\n{end}\noutro\n"
    assert not update_readme(readme, "gpu", "x\n")  # no block for that tier: nothing written
