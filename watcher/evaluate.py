"""`watcher rules eval`: precision, recall and event-type accuracy on labelled items.

A labels file is JSON Lines: the fields of `watcher rules test` input (`id,
title, text, source, published, lang, url`) plus `label` (`positive` or
`negative`) and, for positives, `event_type`. An item is predicted positive
when any rule matches; its predicted event type is that of the most severe
matching rule (the first loaded, on a tie).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watcher.inputs import InputError, read_items
from watcher.models import EventType, Hit, Item
from watcher.rules import Matcher


@dataclass(frozen=True)
class Labelled:
    id: str
    item: Item
    positive: bool
    event_type: EventType | None


def read_labels(path: Path) -> list[Labelled]:
    """Labelled items; every problem names the file and line."""
    items = read_items(path)
    raw_lines = [
        (n, line)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if line.strip()
    ]
    if len(raw_lines) != len(items):
        raise InputError(f"{path}: a labels file must be JSON Lines")
    out = []
    for (n, line), (item_id, item) in zip(raw_lines, items, strict=True):
        obj = json.loads(line)
        label = obj.get("label")
        if label not in ("positive", "negative"):
            raise InputError(f"{path}:{n}: 'label' must be 'positive' or 'negative'")
        raw_type = obj.get("event_type")
        event_type: EventType | None = None
        if raw_type:
            try:
                event_type = EventType(raw_type)
            except ValueError:
                known = ", ".join(e.value for e in EventType)
                raise InputError(
                    f"{path}:{n}: unknown event_type {raw_type!r} (one of: {known})"
                ) from None
        if label == "positive" and event_type is None:
            raise InputError(f"{path}:{n}: a positive item needs an 'event_type'")
        out.append(Labelled(item_id, item, label == "positive", event_type))
    return out


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def predicted_type(hits: Sequence[Hit]) -> EventType | None:
    if not hits:
        return None
    best = max(range(len(hits)), key=lambda i: (hits[i].severity.rank, -i))
    return hits[best].event_type


@dataclass
class _RuleCount:
    fired: int = 0
    true_positive: int = 0
    false_positive: int = 0
    wrong_type: int = 0


@dataclass
class Report:
    items: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    type_correct: int = 0
    per_type: dict[str, dict[str, int]] = field(default_factory=dict)
    per_rule: dict[str, _RuleCount] = field(default_factory=dict)
    false_positives: list[dict[str, Any]] = field(default_factory=list)
    misses: list[dict[str, Any]] = field(default_factory=list)
    wrong_types: list[dict[str, Any]] = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def type_accuracy(self) -> float | None:
        return _ratio(self.type_correct, self.tp)

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "precision": self.precision,
            "recall": self.recall,
            "event_type_accuracy": self.type_accuracy,
            "counts": {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn},
            "per_event_type": {
                t: {
                    **c,
                    "precision": _ratio(c["correct"], c["predicted"]),
                    "recall": _ratio(c["correct"], c["labelled"]),
                }
                for t, c in sorted(self.per_type.items())
            },
            "per_rule": {
                r: {
                    "fired": c.fired,
                    "true_positive": c.true_positive,
                    "false_positive": c.false_positive,
                    "wrong_type": c.wrong_type,
                    "precision": _ratio(c.true_positive, c.fired),
                }
                for r, c in sorted(self.per_rule.items())
            },
            "false_positives": self.false_positives,
            "misses": self.misses,
            "wrong_event_type": self.wrong_types,
        }


def _snippet(item: Item) -> str:
    text = item.title or item.text
    return text if len(text) <= 100 else text[:99] + "…"


def evaluate(matcher: Matcher, labelled: Sequence[Labelled]) -> Report:
    report = Report(items=len(labelled))
    for rule in matcher.rules:
        report.per_rule[rule.rule.id] = _RuleCount()
    for t in EventType:
        report.per_type[t.value] = {"labelled": 0, "predicted": 0, "correct": 0}
    for x in labelled:
        hits = matcher.match(x.item)
        guess = predicted_type(hits)
        if x.positive and x.event_type is not None:
            report.per_type[x.event_type.value]["labelled"] += 1
        if guess is not None:
            report.per_type[guess.value]["predicted"] += 1
        for hit in hits:
            count = report.per_rule[hit.rule_id]
            count.fired += 1
            if not x.positive:
                count.false_positive += 1
            else:
                count.true_positive += 1
                count.wrong_type += hit.event_type != x.event_type
        if x.positive and hits:
            report.tp += 1
            if guess is not None and guess == x.event_type:
                report.type_correct += 1
                report.per_type[guess.value]["correct"] += 1
            else:
                report.wrong_types.append(
                    {
                        "id": x.id,
                        "text": _snippet(x.item),
                        "event_type": x.event_type.value if x.event_type else None,
                        "predicted": guess.value if guess else None,
                        "rules": [h.rule_id for h in hits],
                    }
                )
        elif x.positive:
            report.fn += 1
            report.misses.append(
                {
                    "id": x.id,
                    "text": _snippet(x.item),
                    "event_type": x.event_type.value if x.event_type else None,
                }
            )
        elif hits:
            report.fp += 1
            report.false_positives.append(
                {"id": x.id, "text": _snippet(x.item), "rules": [h.rule_id for h in hits]}
            )
        else:
            report.tn += 1
    return report


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_report(report: Report) -> str:
    """The human-readable report of `watcher rules eval`."""
    d = report.as_dict()
    c = d["counts"]
    lines = [
        f"items: {report.items}  positives: {c['tp'] + c['fn']}  negatives: {c['fp'] + c['tn']}",
        f"precision: {_pct(report.precision)}  recall: {_pct(report.recall)}  "
        f"event-type accuracy: {_pct(report.type_accuracy)}  "
        f"(tp {c['tp']}, fp {c['fp']}, fn {c['fn']}, tn {c['tn']})",
        "",
        "per event type:",
    ]
    for t, s in d["per_event_type"].items():
        lines.append(
            f"  {t:<26} labelled {s['labelled']:>3}  predicted {s['predicted']:>3}  "
            f"correct {s['correct']:>3}  precision {_pct(s['precision'])}  "
            f"recall {_pct(s['recall'])}"
        )
    lines += ["", "per rule:"]
    for r, s in d["per_rule"].items():
        lines.append(
            f"  {r:<40} fired {s['fired']:>3}  tp {s['true_positive']:>3}  "
            f"fp {s['false_positive']:>3}  wrong type {s['wrong_type']:>3}  "
            f"precision {_pct(s['precision'])}"
        )
    lines += ["", f"false positives ({len(report.false_positives)}):"]
    lines += [f"  {x['id']}: {', '.join(x['rules'])}: {x['text']}" for x in report.false_positives]
    lines += ["", f"misses ({len(report.misses)}):"]
    lines += [f"  {x['id']} ({x['event_type']}): {x['text']}" for x in report.misses]
    lines += ["", f"wrong event type ({len(report.wrong_types)}):"]
    lines += [
        f"  {x['id']}: {x['event_type']} predicted {x['predicted']} by "
        f"{', '.join(x['rules'])}: {x['text']}"
        for x in report.wrong_types
    ]
    return "\n".join(lines)
