"""User-facing text names no path outside the repository, and RELPROP_SHARED means what the README says
(issue 15 §2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import shared_data_folder

from relprop.cli import main

REPO = Path(__file__).resolve().parents[1]


def _evaluation_lines_of_the_readme() -> list[str]:
    """README lines about ``relprop evaluate``, its data and RELPROP_SHARED, with their continuations."""
    lines, keep = [], False
    for line in (REPO / "README.md").read_text().splitlines():
        keep = keep and line.startswith(" ") or bool(re.search(r"relprop evaluate|RELPROP_SHARED|--root", line))
        if keep:
            lines.append(line)
    return lines


def test_the_evaluation_docs_and_help_point_at_nothing_outside_the_repository(capsys) -> None:
    texts = {"docs/evaluation.md": (REPO / "docs" / "evaluation.md").read_text(),
             "README.md (evaluate lines)": "\n".join(_evaluation_lines_of_the_readme())}
    assert len(_evaluation_lines_of_the_readme()) >= 4
    for command in ("evaluate", "sanity"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        texts[f"relprop {command} --help"] = capsys.readouterr().out
    for name, text in texts.items():
        assert "../shared" not in text and "shared/data" not in text, name


def test_evaluate_help_documents_the_exit_status(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "exit status:" in text
    for code in ("0", "1", "2", "130"):
        assert re.search(rf"^  {code} +\S", text, re.MULTILINE), code


def test_relprop_shared_names_the_data_folder_or_the_folder_holding_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "voc2007").mkdir(parents=True)
    assert shared_data_folder(str(tmp_path)) == data
    assert shared_data_folder(str(data)) == data
