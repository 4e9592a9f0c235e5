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
