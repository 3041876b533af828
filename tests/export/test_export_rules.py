"""The export rules: one table, read by the exporters and by `lowbit export --list`."""

from __future__ import annotations

import pytest

from lowbit.core.scheme import Scheme
from lowbit.export import rules


def test_every_target_answers_every_scheme_with_a_known_status():
    table = rules.targets()
    assert {"gguf", "compressed-tensors", "bnb"} <= set(table)
    for row in rules.rows():
        for target in table:
            assert row[target] in rules.STATUSES, (target, row["scheme"])


def test_gguf_column_is_the_gguf_exporters_rule():
    from lowbit.export.gguf_types import lossless_type

    for name in rules.TABLE_SCHEMES:
        lossless = lossless_type(Scheme.parse(name)) is not None
        assert (rules.support("gguf", name)[0] == "lossless") == lossless, name


def test_a_target_is_one_registration(monkeypatch):
    monkeypatch.setitem(rules._TARGETS, "toy", ("lowbit.export.bnb_layout", "support"))
    monkeypatch.setitem(rules._TARGETS, "absent", ("lowbit.export.no_such_module", "support"))
    table = rules.markdown_table(["nf4-g64", "int4-sym-g32"])
    assert table.splitlines()[0].endswith("| toy |") and "absent" not in table
    assert rules.support("toy", "nf4-g64")[0] == "lossless"
    with pytest.raises(ValueError, match="unknown export target 'nope'"):
        rules.support("nope", "nf4-g64")


def test_cli_lists_the_table_and_one_targets_reasons(capsys):
    from lowbit.cli import main

    assert main(["export", "--list"]) == 0
    out = capsys.readouterr().out
    assert "| scheme | gguf | compressed-tensors | bnb" in out
    assert "| `nf4-g64-dq` | requantize | requantize | lossless" in out
    assert main(["export", "--list", "--to", "compressed-tensors"]) == 0
    out = capsys.readouterr().out
    assert "int4-asym-g32 " in out and "float zero point" in out
