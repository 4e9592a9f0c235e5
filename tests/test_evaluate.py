"""`watcher rules eval` and `watcher rules schema`; the shipped pack on our labelled set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from watcher.cli import main
from watcher.evaluate import evaluate, read_labels
from watcher.inputs import InputError
from watcher.rules import RuleFile, load_matcher, rule_file_schema

REPO = Path(__file__).resolve().parent.parent
LABELS = Path(__file__).parent / "testdata" / "labelled.jsonl"
RULES = Path(__file__).parent / "testdata" / "rules"

# Floors for the shipped pack on tests/testdata/labelled.jsonl (hand-written
# items: real kinds of events, and hard negatives that share their vocabulary).
MIN_PRECISION = 0.95
MIN_RECALL = 0.90
MIN_EVENT_TYPE_ACCURACY = 0.90


def test_shipped_pack_meets_the_floor_on_the_labelled_set() -> None:
    labelled = read_labels(LABELS)
    assert len(labelled) >= 4240
    assert sum(x.positive for x in labelled) >= 100
    # hard negatives and every language the pack speaks are represented
    languages = {x.item.language for x in labelled}
    assert {"en", "zh", "ja", "es", "fr", "de", "it", "ar"} <= languages
    assert sum(not x.positive for x in labelled) >= 150
    report = evaluate(load_matcher([REPO / "rules"]), labelled)
    summary = (report.precision, report.recall, report.type_accuracy)
    detail = json.dumps(
        {k: report.as_dict()[k] for k in ("false_positives", "misses", "wrong_event_type")},
        ensure_ascii=False,
        indent=1,
    )
    assert report.precision is not None and report.precision >= MIN_PRECISION, detail
    assert report.recall is not None and report.recall >= MIN_RECALL, detail
    assert report.type_accuracy is not None, summary
    assert report.type_accuracy >= MIN_EVENT_TYPE_ACCURACY, detail


def _labels(tmp_path: Path, *rows: dict[str, object]) -> Path:
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


ROWS: list[dict[str, object]] = [
    {"id": "p1", "label": "positive", "event_type": "export_restriction",
     "title": "Beijing imposes gallium export ban", "text": ""},
    {"id": "p2", "label": "positive", "event_type": "export_easing",
     "title": "Gallium export ban", "text": "lifted"},
    {"id": "p3", "label": "positive", "event_type": "export_restriction",
     "title": "Germanium curbs", "text": ""},
    {"id": "n1", "label": "negative", "title": "Gallium export ban on rice", "text": ""},
    {"id": "n2", "label": "negative", "title": "Weather", "text": "sunny"},
]  # fmt: skip


def test_eval_counts_every_outcome(tmp_path: Path) -> None:
    report = evaluate(load_matcher([RULES / "good.yaml"]), read_labels(_labels(tmp_path, *ROWS)))
    d = report.as_dict()
    assert d["counts"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert (d["precision"], d["recall"], d["event_type_accuracy"]) == (0.6667, 0.6667, 0.5)
    assert d["per_rule"]["gallium-curb"] == {
        "fired": 3, "true_positive": 2, "false_positive": 1, "wrong_type": 1, "precision": 0.6667,
    }  # fmt: skip
    assert d["per_event_type"]["export_restriction"] == {
        "labelled": 2, "predicted": 3, "correct": 1, "precision": 0.3333, "recall": 0.5,
    }  # fmt: skip
    assert d["false_positives"] == [
        {"id": "n1", "text": "Gallium export ban on rice", "rules": ["gallium-curb"]}
    ]
    assert d["misses"] == [
        {"id": "p3", "text": "Germanium curbs", "event_type": "export_restriction"}
    ]
    assert [x["id"] for x in d["wrong_event_type"]] == ["p2"]


def test_eval_command_prints_a_report_and_enforces_floors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = _labels(tmp_path, *ROWS)
    args = ["rules", "eval", "--rules", str(RULES / "good.yaml"), "--labels", str(labels)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "precision: 0.667  recall: 0.667  event-type accuracy: 0.500" in out
    assert "n1: gallium-curb: Gallium export ban on rice" in out
    assert "p3 (export_restriction): Germanium curbs" in out
    assert main([*args, "--min-precision", "0.9"]) == 1
    assert "error: precision 0.6667 < 0.9" in capsys.readouterr().err
    assert main([*args, "--json", "--min-recall", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["tp"] == 2


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "a", "label": "maybe"}, ":1: 'label' must be 'positive' or 'negative'"),
        ({"id": "a", "label": "positive"}, ":1: a positive item needs an 'event_type'"),
        (
            {"id": "a", "label": "positive", "event_type": "ban"},
            ":1: unknown event_type 'ban' (one of: export_restriction,",
        ),
    ],
)
def test_bad_labels_name_file_and_line(
    tmp_path: Path, row: dict[str, object], message: str
) -> None:
    path = _labels(tmp_path, row)
    with pytest.raises(InputError) as err:
        read_labels(path)
    assert f"{path}{message}" in str(err.value)


def test_a_feed_is_not_a_labels_file(tmp_path: Path) -> None:
    from tests.feeds import CURB, rss

    feed = tmp_path / "f.rss"
    feed.write_bytes(rss(CURB))
    with pytest.raises(InputError, match="a labels file must be JSON Lines"):
        read_labels(feed)


def test_schema_command_prints_the_rule_file_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == rule_file_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    rule = schema["$defs"]["Rule"]
    assert rule["additionalProperties"] is False
    assert set(rule["required"]) == {"id", "title", "event_type", "severity", "query"}
    assert RuleFile.model_json_schema()["properties"].keys() == {"lists", "rules"}
