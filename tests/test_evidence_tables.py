"""The generated tables of docs/EVIDENCE.md are what their committed raw results give (bench.evidence_tables)."""

from __future__ import annotations

import pytest

from bench import evidence_tables


@pytest.mark.parametrize("name", list(evidence_tables.BLOCKS))
def test_a_generated_block_of_the_doc_is_what_its_records_give(name):
    for source in evidence_tables.BLOCKS[name][0]:
        assert (evidence_tables.ROOT / source).exists(), f"{source} is not committed"
    doc = evidence_tables.DOC.read_text(encoding="utf-8")
    assert evidence_tables.committed(doc, name) == evidence_tables.render(name)


def test_check_names_a_block_whose_numbers_were_edited_and_a_rewrite_restores_it(tmp_path, capsys):
    doc = evidence_tables.DOC.read_text(encoding="utf-8")
    edited = doc.replace("| decontext@16 | 0.857 | 0.772 | -0.092 [-0.129, -0.056] |", "| decontext@16 | 0.857 | "
                         "0.772 | -0.100 [-0.129, -0.056] |", 1)  # fmt: skip
    assert edited != doc
    copy = tmp_path / "EVIDENCE.md"
    copy.write_text(edited, encoding="utf-8")
    assert evidence_tables.main(["--check", "--doc", str(copy)]) == 1
    assert "effect-grid-v3" in capsys.readouterr().out
    assert copy.read_text(encoding="utf-8") == edited  # --check writes nothing
    assert evidence_tables.main(["--doc", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == doc


def test_a_block_without_its_markers_is_refused(tmp_path):
    doc = evidence_tables.DOC.read_text(encoding="utf-8")
    copy = tmp_path / "EVIDENCE.md"
    copy.write_text(doc.replace(evidence_tables.end_marker("effect-grid-v1-v3"), ""), encoding="utf-8")
    with pytest.raises(ValueError, match="effect-grid-v1-v3"):
        evidence_tables.main(["--check", "--doc", str(copy)])
