from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.feeds import CURB, NOISE, rss
from watcher.cli import main

REPO = Path(__file__).resolve().parent.parent
RULES = Path(__file__).parent / "testdata" / "rules"


def test_rules_test_on_a_feed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feed = tmp_path / "feed.rss"
    feed.write_bytes(rss(CURB, NOISE))
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "ree.yaml").write_text((RULES / "ree.yaml").read_text())
    assert main(["rules", "test", "--rules", str(rules), "--input", str(feed)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines == [
        {
            "id": "curb-1",
            "matches": [
                {"rule": "ree-export-curb", "event_type": "export_restriction", "severity": "high"}
            ],
        },
        {"id": "noise-1", "matches": []},
    ]


def test_rules_test_on_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps(x, ensure_ascii=False)
            for x in [
                {
                    "id": "zh-1",
                    "title": "",
                    "text": "商务部公告：对稀土相关物项实施出口管制",
                    "extra": 1,
                },
                {
                    "id": "en-1",
                    "title": "Rare earth export ban",
                    "published": "2026-02-05T10:00:00Z",
                },
                {"title": "Weather", "text": "Sunny", "lang": "en", "source": "w", "url": None},
            ]
        )
    )
    assert main(["rules", "test", "--rules", str(RULES / "ree.yaml"), "--input", str(jsonl)]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["id"] for o in out[:2]] == ["zh-1", "en-1"]
    assert [len(o["matches"]) for o in out] == [1, 1, 0]
    assert out[2]["id"].startswith("hash:")


def test_rules_test_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1"}\n{not json\n')
    assert main(["rules", "test", "--rules", str(RULES / "ree.yaml"), "--input", str(bad)]) == 2
    assert f"{bad}:2: invalid JSON" in capsys.readouterr().err


def test_rules_test_with_broken_rules_names_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["rules", "test", "--rules", str(RULES / "bad_query_inline.yaml"), "--input", "x"])
    assert exit_.value.code == 2
    assert "inline-bad" in capsys.readouterr().err


def test_demo_runs_offline_end_to_end() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "watcher.cli", "demo", "--rules", str(REPO / "rules")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    alerts = [line for line in out.splitlines() if line.strip().startswith("ALERT")]
    assert len(alerts) >= 4, out
    for event_type in ("entity_listing", "export_restriction", "agreement_signed"):
        assert any(event_type in a for a in alerts), out
    sent = [line for line in out.splitlines() if "delivery #" in line and " sent" in line]
    assert len(sent) == 2 * len(alerts), out  # every alert to the email and the webhook sink
    assert f"done: {len(alerts)} alerts, {len(alerts)} emails and {len(alerts)} webhooks" in out
    assert "unchanged" in out  # the second poll is conditional
    assert "Traceback" not in proc.stderr


def _store_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[store]\nurl = "{url}"\n[rules]\npaths = ["{RULES / "ree.yaml"}"]\n')
    return path


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("mysql://u:hunter2@db/x", "'mysql' is not a supported store"),
        ("garbage", "not a database URL"),
        ("postgresql+psycopg2://u:hunter2@db/x", "postgresql+asyncpg"),
    ],
)
def test_a_store_url_watcher_cannot_use_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, said: str
) -> None:
    config = _store_config(tmp_path, url)
    for command in (["check-config"], ["sources", "list"], ["deliveries", "list"]):
        assert main([*command, "-c", str(config)]) == 2
        err = capsys.readouterr().err
        assert "store.url" in err and said in err, err
        assert "hunter2" not in err and "Traceback" not in err


def test_a_store_that_cannot_be_opened_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory that is not there, or a PostgreSQL nobody listens for: one line that
    names the store (its password hidden) and why, exit 2, no traceback."""
    missing = _store_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/w.db")
    assert main(["sources", "list", "-c", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: store sqlite+aiosqlite:///{tmp_path}/no/such/dir/w.db: ")
    assert "cannot open: FileNotFoundError: no directory " in err, err
    down = _store_config(tmp_path, "postgresql://u:hunter2@127.0.0.1:1/db")
    assert main(["deliveries", "list", "-c", str(down)]) == 2
    err = capsys.readouterr().err
    assert "error: store postgresql+asyncpg://u:***@127.0.0.1:1/db: cannot open: " in err, err
    assert "hunter2" not in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_postgresql_url_without_a_driver_gets_watchers(tmp_path: Path) -> None:
    from watcher.config import load_config

    config = load_config(_store_config(tmp_path, "postgresql://u@db:5432/x"))
    assert config.store.url == "postgresql+asyncpg://u@db:5432/x"
    config = load_config(_store_config(tmp_path, "sqlite:///w.db"))
    assert config.store.url == "sqlite+aiosqlite:///w.db"
    # SQLAlchemy knows "postgres" only without a driver: spelled as it knows it
    config = load_config(_store_config(tmp_path, "postgres+asyncpg://u@db/x"))
    assert config.store.url == "postgresql+asyncpg://u@db/x"


@pytest.mark.parametrize("where", ["taken", "unknown-host"])
def test_run_where_the_api_cannot_listen_is_one_line_and_starts_nothing(
    tmp_path: Path, where: str
) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        host = "127.0.0.1" if where == "taken" else "no-such-host.invalid"
        config = tmp_path / "config.toml"
        config.write_text(
            f'[store]\nurl = "sqlite+aiosqlite:///{tmp_path}/w.db"\n'
            f'[api]\nhost = "{host}"\nport = {port}\n'
            f'[rules]\npaths = ["{RULES / "ree.yaml"}"]\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "watcher.cli", "run", "-c", str(config)],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: api: cannot listen on {host}:{port}: "), done.stderr
    assert "Traceback" not in done.stderr and "watcher running" not in done.stderr
    assert not (tmp_path / "w.db").exists()  # the store was not even opened


def test_output_into_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    """`watcher rules test ... | head -1`: the reader goes away while there is more to
    write (far more than a pipe's buffer here)."""
    feed = tmp_path / "feed.rss"
    feed.write_bytes(rss(*((f"g{i}", f"Gallium item {i}", "text") for i in range(5000))))
    done = subprocess.run(
        f"{sys.executable} -m watcher.cli rules test --rules {RULES / 'ree.yaml'} "
        f"--input {feed} | head -1",
        shell=True, capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.stdout.startswith('{"id": "g0"')
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_check_config_with_rule_errors_does_not_say_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "bad.yaml"
    rules.write_text("rules:\n  - id: [oops\n")
    config = tmp_path / "config.toml"
    config.write_text(f'[rules]\npaths = ["{rules}"]\n')
    assert main(["check-config", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{config}: 1 rule error(s) (the config itself is valid: ")
    assert ": ok:" not in out


def test_rules_test_on_a_file_that_is_no_feed_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("just some words\n")
    assert main(["rules", "test", "--rules", str(RULES / "ree.yaml"), "--input", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {junk}: not a feed or JSON Lines file: unrecognised "), err
    assert "source 'junk'" not in err
