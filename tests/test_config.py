from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from watcher.cli import main
from watcher.config import Config, HealthConfig, load_config
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
    assert hook.type == "webhook" and hook.signing_key is not None
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


@pytest.mark.usefixtures("secrets")
def test_environment_sets_nested_keys_lists_and_whole_sections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHER_POLLING__TIMEOUT_S", "12.5")
    monkeypatch.setenv("WATCHER_POLLING__ALLOW_NETWORKS", '["10.0.0.0/8", "127.0.0.0/8"]')
    monkeypatch.setenv("watcher_outbox__concurrency", "7")  # names are case-insensitive
    monkeypatch.setenv("WATCHER_API", '{"host": "0.0.0.0", "PORT": 9001}')  # JSON: a section
    monkeypatch.setenv("WATCHER_API__PORT", "9002")  # a key wins over its section's JSON
    monkeypatch.setenv("WATCHER_SOURCES", '[{"id": "env-src", "url": "https://example.org/f"}]')
    config = load_config(DATA / "good.toml")
    assert config.polling.timeout_s == 12.5
    assert [str(n) for n in config.polling.allow_networks] == ["10.0.0.0/8", "127.0.0.0/8"]
    assert config.polling.connect_timeout_s == 10  # the section's other keys keep their values
    assert config.outbox.concurrency == 7
    assert (config.api.host, config.api.port) == ("0.0.0.0", 9002)
    assert [s.id for s in config.sources] == ["env-src"]  # a list is replaced, not merged
    assert config.store.url == "sqlite+aiosqlite:///watcher.db"  # the file's, where no variable
    # a config validated directly takes the environment too (as `watcher demo` builds its own)
    assert Config.model_validate({}).outbox.concurrency == 7


@pytest.mark.usefixtures("secrets")
def test_other_watcher_variables_are_ignored_and_unknown_keys_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHER_SMTP_PASSWORD", "not-a-setting")  # names no section
    monkeypatch.setenv("WATCHER_STORE_URL", "one underscore: not a section's key")
    assert load_config(DATA / "good.toml").store.url == "sqlite+aiosqlite:///watcher.db"
    monkeypatch.setenv("WATCHER_API__PROT", "9999")
    text = problems("good.toml")
    assert "api.prot (from WATCHER_API__PROT): Extra inputs are not permitted" in text


@pytest.mark.usefixtures("secrets")
def test_bad_environment_values_name_the_variable_not_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHER_API__PORT", "80808")
    monkeypatch.setenv("WATCHER_POLLING__TIMEOUT_S", "soon")
    monkeypatch.setenv("WATCHER_SOURCES", '[{"id": "x", "url": "not a url hunter2"}]')
    text = problems("good.toml")
    assert "api.port (from WATCHER_API__PORT): Input should be less than or equal to 65535" in text
    assert "polling.timeout_s (from WATCHER_POLLING__TIMEOUT_S):" in text
    assert "sources[0].url (from WATCHER_SOURCES):" in text
    assert "hunter2" not in text and "80808" not in text
    # JSON that does not parse: the variable and where, not its text (a URL may hold a password)
    monkeypatch.setenv("WATCHER_STORE", '{"url": "postgresql://u:hunter2@db/w"')
    text = problems("good.toml")
    assert "environment variable WATCHER_STORE: not valid JSON" in text
    assert "hunter2" not in text
    monkeypatch.delenv("WATCHER_STORE")
    monkeypatch.setenv("WATCHER_POLLING__ALLOW_NETWORKS", "10.0.0.0/8")  # a list takes JSON
    assert "WATCHER_POLLING__ALLOW_NETWORKS: not valid JSON" in problems("good.toml")


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


def test_a_receiver_timeout_must_fit_in_half_the_outbox_lease() -> None:
    text = problems("timeout_past_lease.toml")
    assert "receivers[1].timeout_s (30) must be less than half of outbox.lease_s (60)" in text
    assert "receivers[0]" not in text


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


def test_example_and_readme_document_the_health_settings() -> None:
    """[health] and the per-source quiet_after_s, with the real defaults."""
    example = tomllib.loads((REPO / "config.example.toml").read_text())
    defaults = HealthConfig()
    shown = example["health"]
    assert set(shown) | {"operator_receiver"} == set(HealthConfig.model_fields)
    assert all(shown[key] == getattr(defaults, key) for key in shown)
    assert any("quiet_after_s" in s for s in example["sources"])
    readme = (REPO / "README.md").read_text()
    [health_row] = [line for line in readme.splitlines() if line.startswith("| `[health]` |")]
    for key in HealthConfig.model_fields:
        assert f"`{key}`" in health_row
    assert "`broken_after_errors` (5)" in health_row and "`check_interval_s` (300)" in health_row
    [sources_row] = [line for line in readme.splitlines() if line.startswith("| `[[sources]]` |")]
    assert "`quiet_after_s` (none" in sources_row


def test_check_config_reports_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(DATA / "unknown_key.toml")]) == 2
    assert "intervall_s" in capsys.readouterr().err


def test_intervals_of_scheduled_jobs_are_a_second_or_more(tmp_path: Path) -> None:
    """An interval below a second is refused by name: rule reloads and health checks are
    APScheduler jobs, which list every run they missed at each wake-up (a run per
    microsecond the service is late), and a poll interval that small would have the poll
    clock poll a source without pause (one of less than nothing hung the service)."""
    path = tmp_path / "config.toml"
    path.write_text(
        "[rules]\nreload_interval_s = 0.001\n"
        "[polling]\nmin_interval_s = 0.5\n"
        "[health]\ncheck_interval_s = 0.000001\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "rules.reload_interval_s: " in text and "0 (never) or at least 1 second" in text
    assert "polling.min_interval_s: " in text and "health.check_interval_s: " in text
    path.write_text("[rules]\nreload_interval_s = 0\n[health]\ncheck_interval_s = 1\n")
    config = load_config(path)
    assert (config.rules.reload_interval_s, config.health.check_interval_s) == (0, 1)
