"""Config: files, flag overrides and the errors that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.config import ConfigError, build_config, deep_merge


def test_flags_override_the_file_and_unset_flags_leave_it_alone(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("source: {kind: folder, path: imgs}\nembedder: {kind: pixels, batch_size: 8}\n")
    config = build_config(tmp_path / "c.yaml", {"embedder": {"batch_size": 32, "model": None}, "seed": None})
    assert config.embedder.kind == "pixels" and config.embedder.batch_size == 32
    assert config.embedder.model == "ViT-B-32" and config.seed == 0


def test_none_values_are_dropped_at_every_depth() -> None:
    assert deep_merge({}, {"a": {"b": None, "c": 1}, "d": None}) == {"a": {"c": 1}}


def test_pyproject_table_and_toml(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.label-audit]\nsource = {kind = "manifest", path = "m.csv"}\n'
                                             '[tool.label-audit.gate]\nmax_issue_rate = 0.05\n')
    config = build_config(tmp_path / "pyproject.toml")
    assert config.source.kind == "manifest" and config.gate == {"max_issue_rate": 0.05}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source: {kind: folder}\n", "needs a path"),
        ("source: {kind: folder, path: x}\nembedder: {kind: magic}\n", "embedder.kind"),
        ("source: {kind: folder, path: x}\nembedder: {batch_size: 0}\n", "embedder.batch_size"),
        ("source: {kind: folder, path: x}\nunknown_key: 1\n", "unknown_key"),
        ("- a list\n", "mapping at the top level"),
        ("embedder: {kind: pixels}\n", "no source given"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_config(tmp_path / "c.yaml")
