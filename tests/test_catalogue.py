"""The shipped catalogue of real sources, enabled from config by id."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from watcher.catalogue import catalogue
from watcher.cli import main
from watcher.config import SourceConfig, load_config
from watcher.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_every_entry_is_a_valid_source() -> None:
    entries = catalogue()
    assert len(entries) >= 10
    for entry in entries.values():
        source = TypeAdapter(SourceConfig).validate_python(entry.as_source())
        assert str(source.url).startswith("https://"), entry.id
        assert entry.format in ("rss", "atom", "federal-register-json")
        assert entry.language in ("en", "ja", "zh")
        assert entry.jurisdiction and entry.tags and entry.source
    jurisdictions = {e.jurisdiction for e in entries.values()}
    assert {"us", "uk", "eu", "jp", "cn"} <= jurisdictions


def test_catalogue_agrees_with_the_example_config() -> None:
    example = tomllib.loads((REPO / "config.example.toml").read_text())
    entries = catalogue()
    shared = [s for s in example["sources"] if s["id"] in entries]
    assert len(shared) >= 6
    for s in shared:
        assert entries[s["id"]].url == s["url"], s["id"]


def test_config_enables_catalogue_entries_by_id(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'catalogue = ["fr-bis", "govuk-ecju"]\n'
        '[[sources]]\nid = "govuk-ecju"\nurl = "https://example.org/mirror.atom"\n'
    )
    config = load_config(path)
    by_id = {s.id: s for s in config.sources}
    assert set(by_id) == {"fr-bis", "govuk-ecju"}
    assert str(by_id["govuk-ecju"].url) == "https://example.org/mirror.atom"  # config wins
    assert by_id["fr-bis"].tags == ("us", "export-control", "bis", "government")


def test_a_source_with_a_catalogue_id_overrides_it_field_by_field(tmp_path: Path) -> None:
    ecju, bis = catalogue()["govuk-ecju"], catalogue()["fr-bis"]
    path = tmp_path / "c.toml"
    path.write_text(
        'catalogue = ["govuk-ecju", "fr-bis"]\n'
        '[[sources]]\nid = "govuk-ecju"\nurl = "https://example.org/mirror.atom"\n'
        '[[sources]]\nid = "fr-bis"\ninterval_s = 300\ntags = ["bis"]\n'
    )
    mirror, fast = load_config(path).sources
    # a new URL keeps the catalogue's tags, language and interval
    assert mirror.url == "https://example.org/mirror.atom"
    assert (mirror.tags, mirror.language, mirror.interval_s) == (
        ecju.tags, ecju.language, ecju.interval_s
    )  # fmt: skip
    # only an interval and tags: the catalogue's URL and language
    assert (fast.url, fast.language, fast.interval_s, fast.tags) == (
        bis.url, bis.language, 300, ("bis",)
    )  # fmt: skip


@pytest.mark.parametrize("entry", ['["fr-bis"]', '{id = "fr-bis"}', "5"])
def test_a_catalogue_entry_that_is_not_an_id_is_a_config_error(
    tmp_path: Path, entry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'catalogue = ["govuk-ecju", {entry}]\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == ["catalogue[1]: Input should be a valid string"]
    assert main(["check-config", "-c", str(path)]) == 2  # an error, not a traceback
    assert f"{path}: catalogue[1]: Input should be a valid string" in capsys.readouterr().err


def test_an_unknown_id_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHER_CATALOGUE", '["fr-bis", "no-such-feed"]')
    path = tmp_path / "c.toml"
    path.write_text('catalogue = ["fr-bis"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    [problem] = err.value.problems
    assert problem.startswith(
        "catalogue (from WATCHER_CATALOGUE): unknown source id(s) 'no-such-feed'; known: "
    )


def test_unknown_catalogue_id_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('catalogue = ["fr-bis", "no-such-feed"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "unknown source id(s) 'no-such-feed'" in str(err.value)


def test_sources_catalogue_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sources", "catalogue"]) == 0
    out = capsys.readouterr().out
    assert "fr-bis" in out and "meti-news" in out and "not checked live" in out


def test_sources_that_are_not_tables_are_a_config_error_with_a_catalogue(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('catalogue = ["fr-bis"]\nsources = ["fr-bis"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [p.split(":")[0] for p in err.value.problems] == ["sources[0]"]
