"""The CLI's settings are config.Settings: the environment's, with what its options override."""

from __future__ import annotations

import pytest

from imgsearch.cli import main
from imgsearch.config import Settings
from imgsearch.storage import CATALOG_FILE


def test_the_data_directory_is_the_settings_unless_an_option_names_one(
    tmp_path, monkeypatch, capsys
) -> None:
    from_environment, from_option = tmp_path / "environment", tmp_path / "option"
    monkeypatch.setenv("IMGSEARCH_DATA", str(from_environment))
    assert main(["votes", "show", "boat"]) == 0
    assert (from_environment / CATALOG_FILE).is_file()
    assert main(["votes", "show", "boat", "--data-dir", str(from_option)]) == 0
    assert (from_option / CATALOG_FILE).is_file()
    assert capsys.readouterr().out == "boat: 0 votes from 0 sessions and 0 clients\n" * 2


def test_only_imgsearch_variables_name_the_data_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "another program's"))
    assert Settings().data_dir != tmp_path / "another program's"
    monkeypatch.setenv("IMGSEARCH_DATA_DIR", str(tmp_path / "d"))
    assert Settings().data_dir == tmp_path / "d"
    monkeypatch.setenv("IMGSEARCH_DATA", str(tmp_path / "e"))  # the documented name first
    assert Settings().data_dir == tmp_path / "e"
    assert Settings(data_dir=tmp_path / "f").data_dir == tmp_path / "f"


def test_serve_refuses_a_number_of_workers_below_one(tmp_path, capsys) -> None:
    for workers in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as refused:
            main(["serve", "--data-dir", str(tmp_path), "--workers", workers])
        assert refused.value.code == 2
        assert "--workers" in capsys.readouterr().err


def test_eval_refuses_index_settings_the_index_would_misread(tmp_path, capsys) -> None:
    """`--search-k 0` would be read as Annoy's default without the floor of nodes, and
    `--candidates 0` as no candidates: refused before any ingest, as the settings refuse them."""
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n")
    for search_k, reason in (("0", "ann_search_k is -1"), ("-2", "greater than or equal to -1")):
        assert main(["eval", str(tmp_path), "--labels", str(labels), "--search-k", search_k]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"imgsearch: --search-k {search_k}: ") and reason in error
    with pytest.raises(SystemExit) as refused:
        main(["eval", str(tmp_path), "--labels", str(labels), "--candidates", "0"])
    assert refused.value.code == 2
    assert "--candidates" in capsys.readouterr().err
