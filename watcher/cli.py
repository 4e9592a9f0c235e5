"""The command line. The only place that configures logging and turns errors into exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from watcher import __version__
from watcher.config import load_config
from watcher.errors import WatcherError
from watcher.inputs import read_items
from watcher.rules import Matcher, check_examples, load_rules
from watcher.sources_cli import add_commands as add_sources_commands

logger = logging.getLogger("watcher")

DEFAULT_RULES = [Path("rules")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("apscheduler", "aiosqlite", "asyncio", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load_matcher_or_report(paths: Sequence[Path]) -> Matcher:
    rules, errors = load_rules(paths)
    if errors:
        for err in errors:
            print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    return Matcher(rules)


def cmd_run(args: argparse.Namespace) -> int:
    from watcher.service import run

    config = load_config(args.config)
    matcher = _load_matcher_or_report(config.rules.paths)
    run(config, matcher)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _, errors = load_rules(config.rules.paths)
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    print(
        f"{args.config}: ok: {len(config.sources)} source(s), {len(config.receivers)} "
        f"receiver(s), {len(config.subscriptions)} subscription(s)"
        + ("" if not errors else f"; {len(errors)} rule error(s)")
    )
    return 1 if errors else 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    paths = args.paths or DEFAULT_RULES
    rules, errors = load_rules(paths)
    for err in errors:
        print(f"error: {err}")
    failures = 0
    examples = 0
    for rule in rules:
        examples += len(rule.rule.examples.match) + len(rule.rule.examples.no_match)
        for failure in check_examples(rule):
            failures += 1
            print(f"fail: {rule.path}:{rule.line}: rule '{rule.rule.id}': {failure}")
    print(
        f"{len(rules)} rule(s) loaded, {len(errors)} error(s); "
        f"{examples} example(s) run, {failures} failed"
    )
    return 1 if errors or failures else 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    matcher = _load_matcher_or_report([args.rules])
    for item_id, item in read_items(args.input):
        matches = [
            {"rule": h.rule_id, "event_type": h.event_type.value, "severity": h.severity.value}
            for h in matcher.match(item)
        ]
        print(json.dumps({"id": item_id, "matches": matches}, ensure_ascii=False))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from watcher.demo import run_demo

    return asyncio.run(run_demo(rules=args.rules))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watcher",
        description="Alerts on export-control and critical-minerals policy changes.",
    )
    parser.add_argument("--version", action="version", version=f"watcher {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the service (scheduler, workers, API)")
    p.add_argument("-c", "--config", type=Path, default=None, help="config file (TOML)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file and the rules it names")
    p.add_argument("-c", "--config", type=Path, default=Path("config.toml"))
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("demo", help="offline end-to-end demo on bundled sample feeds")
    p.add_argument("--rules", type=Path, default=Path("rules"), help="rules directory")
    p.set_defaults(func=cmd_demo)

    rules = sub.add_parser("rules", help="validate and try rule files").add_subparsers(
        dest="rules_command", required=True, metavar="SUBCOMMAND"
    )
    p = rules.add_parser("check", help="validate rule files and run their examples")
    p.add_argument("paths", nargs="*", type=Path, help="rule files or directories (default: rules)")
    p.set_defaults(func=cmd_rules_check)
    p = rules.add_parser("test", help="match the items of a feed or JSON Lines file")
    p.add_argument("--rules", type=Path, default=Path("rules"))
    p.add_argument("--input", type=Path, required=True)
    p.set_defaults(func=cmd_rules_test)
    add_sources_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except WatcherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
