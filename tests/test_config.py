from __future__ import annotations

from pathlib import Path

import pytest

from watcher.cli import main
from watcher.config import load_config
from watcher.errors import ConfigError

DATA = Path(__file__).parent / "testdata" / "config"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHER_TEST_SMTP_PASSWORD", "s3cret-pw")
    monkeypatch.setenv("WATCHER_TEST_WEBHOOK_SECRET", "whsec_c2VjcmV0")


def problems(name: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(DATA / name)
    assert err.value.path == str(DATA / name)
    return str(err.value)


@pytest.mark.usefixtures("secrets")
def test_good_config_loads_with_secrets_from_the_environment() -> None:
    config = load_config(DATA / "good.toml")
    [email, hook] = config.receivers
    assert email.type == "email" and email.password is not None
    assert email.password.get_secret_value() == "s3cret-pw"
    assert hook.type == "webhook" and hook.secret is not None
    assert "s3cret-pw" not in repr(config) and "s3cret-pw" not in str(config.model_dump())
    # relative rule paths are relative to the config file
    assert [p.resolve() for p in config.rules.paths] == [(DATA.parent / "rules").resolve()]
    assert config.sources[0].interval_s == 900


@pytest.mark.usefixtures("secrets")
def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHER_STORE__URL", "postgresql+asyncpg://db/watcher")
    monkeypatch.setenv("WATCHER_API__PORT", "9999")
    config = load_config(DATA / "good.toml")
    assert config.store.url == "postgresql+asyncpg://db/watcher"
    assert config.api.port == 9999
    assert config.sources[0].id == "fr-bis"  # the rest of the file still applies


def test_missing_secret_names_the_variable_not_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHER_TEST_WEBHOOK_SECRET", "whsec_c2VjcmV0")
    monkeypatch.delenv("WATCHER_TEST_SMTP_PASSWORD", raising=False)
    text = problems("good.toml")
    assert "receivers[0]" in text
    assert "WATCHER_TEST_SMTP_PASSWORD, which is not set" in text


def test_unknown_key_is_named_with_its_place() -> None:
    assert "sources[0].intervall_s: Extra inputs are not permitted" in problems("unknown_key.toml")


def test_a_password_in_the_file_is_refused_and_not_echoed() -> None:
    text = problems("password_in_file.toml")
    assert "receivers[0].password: Extra inputs are not permitted" in text
    assert "hunter2" not in text


def test_cross_references_are_checked() -> None:
    text = problems("bad_refs.toml")
    assert "duplicate source id 'a'" in text
    assert "subscriptions[0].receivers: unknown receiver 'nobody'" in text


def test_bad_values_are_each_named() -> None:
    text = problems("bad_values.toml")
    assert "api.port:" in text
    assert "sources[0].id:" in text
    assert "sources[0].url:" in text
    assert "sources[0].interval_s:" in text
    assert "receivers[0]:" in text and "pager" in text


def test_bad_toml_and_missing_file() -> None:
    assert "invalid TOML" in problems("bad_toml.toml")
    assert "file not found" in problems("nope.toml")


def test_shipped_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(REPO / "config.example.toml")]) == 0
    assert "ok:" in capsys.readouterr().out


def test_check_config_reports_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(DATA / "unknown_key.toml")]) == 2
    assert "intervall_s" in capsys.readouterr().err
