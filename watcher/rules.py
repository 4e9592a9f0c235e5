"""Rule files: YAML lists of rules, validated by pydantic, compiled into one Matcher."""

from __future__ import annotations

import fnmatch
import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from watcher.engine import Prefilter
from watcher.errors import QuerySyntaxError, RuleError
from watcher.facets import Facets, facet_nodes
from watcher.facets import extract as extract_facets
from watcher.gcpause import gc_paused
from watcher.models import EventType, Hit, Item, Severity
from watcher.query import LIST_NAME, Document, Node, compile_test, parse_query
from watcher.rulecache import RuleCache


class ExampleItem(BaseModel):
    """An example written as an item, for rules that use title:, source:, lang: or tag:."""

    model_config = ConfigDict(extra="forbid")

    title: str = ""
    text: str = ""
    source: str = ""
    lang: str = ""
    tags: list[str] = Field(default_factory=list)

    def document(self) -> Document:
        return Document.from_parts(
            title=self.title, text=self.text, source=self.source, lang=self.lang, tags=self.tags
        )


Example = str | ExampleItem


def example_document(example: Example) -> Document:
    """A plain-string example is body text (no title, no metadata)."""
    return Document.from_text(example) if isinstance(example, str) else example.document()


class RuleExamples(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: list[Example] = Field(default_factory=list)
    no_match: list[Example] = Field(default_factory=list)


class Rule(BaseModel):
    """One rule as written in a rule file."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$")
    title: str = Field(min_length=1)
    event_type: EventType
    severity: Severity
    query: str = Field(min_length=1)
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list, description="only these source ids")
    languages: list[str] = Field(default_factory=list, description="only these languages")
    examples: RuleExamples = Field(default_factory=RuleExamples)


class RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lists: dict[str, str] = Field(
        default_factory=dict,
        description="named term lists: `minerals: gallium OR germanium`, used as @minerals",
    )
    rules: list[Rule]


# A file named like this holds only `lists:`, shared by every rule file loaded with it.
LISTS_SUFFIX = ".lists.yaml"


@dataclass(frozen=True)
class SharedLists:
    """The lists of the shared list files loaded, where each was defined, and a digest of
    those files (a rule file's compiled form depends on them: the rule cache keys on it)."""

    lists: dict[str, Node]
    origin: dict[str, str]
    digest: bytes = b""


NO_SHARED_LISTS = SharedLists({}, {})


def rule_file_schema() -> dict[str, Any]:
    """The JSON Schema of a rule file, for editors (`watcher rules schema`)."""
    schema = RuleFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "watcher rule file"
    return schema


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    node: Node
    path: str
    line: int

    def hit(self, facets: Facets | None = None) -> Hit:
        r = self.rule
        facets = facets or Facets()
        return Hit(
            rule_id=r.id,
            rule_title=r.title,
            event_type=r.event_type,
            severity=r.severity,
            tags=tuple(r.tags),
            minerals=facets.minerals,
            countries=facets.countries,
        )

    def applies_to(self, item: Item) -> bool:
        r = self.rule
        if r.sources and not any(fnmatch.fnmatchcase(item.source_id, s) for s in r.sources):
            return False
        return not (r.languages and item.language and item.language not in r.languages)


def item_document(item: Item) -> Document:
    return Document.from_parts(
        title=item.title,
        text=item.text,
        source=item.source_id,
        lang=item.language,
        tags=item.tags,
    )


class Matcher:
    """All loaded rules, evaluated together against each item.

    A prefilter (watcher.engine) finds every rule's literals, and those of the
    facets (watcher.facets), in one pass, so only the rules that may match are
    evaluated, and facets are looked for only among the candidates it found.
    """

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self.rules = tuple(rules)
        with gc_paused():  # see watcher.gcpause: it all stays alive
            self.prefilter = Prefilter([*(r.node for r in self.rules), *facet_nodes()])
            self._tests = tuple(compile_test(r.node) for r in self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def match(self, item: Item) -> list[Hit]:
        """The hits of an item, carrying its facets (minerals, countries) when any rule hits."""
        doc = item_document(item)
        rules, tests = self.rules, self._tests
        n = len(rules)
        candidates = self.prefilter.candidates(doc)
        matched = []
        for index in candidates:
            if index >= n:
                break
            rule = rules[index]
            if tests[index](doc) and rule.applies_to(item):
                matched.append(rule)
        if not matched:
            return []
        facet_candidates = [i - n for i in candidates[bisect_left(candidates, n) :]]
        facets = extract_facets(doc, f"{item.title}\n{item.text}", facet_candidates)
        return [r.hit(facets) for r in matched]


# ---------------------------------------------------------------- loading


def _query_position(node: yaml.Node, column: int) -> tuple[int, int]:
    """Map a 1-based column within a query string to a (line, column) in the file."""
    mark = node.start_mark
    style = getattr(node, "style", None)
    if style in ("|", ">"):
        # Block scalar: the text starts on the next line; find the folded line holding it.
        lines = mark.buffer.splitlines() if mark.buffer else []
        offset, lineno = column - 1, mark.line + 1
        while lineno < len(lines):
            raw = lines[lineno]
            stripped = raw.strip()
            if offset <= len(stripped):
                return lineno + 1, len(raw) - len(raw.lstrip()) + offset + 1
            offset -= len(stripped) + 1
            lineno += 1
        return mark.line + 1, mark.column + 1
    quote = 1 if style in ("'", '"') else 0
    return mark.line + 1, mark.column + quote + column


def _read(path: Path) -> tuple[bytes, str] | RuleError:
    try:
        raw = path.read_bytes()
        return raw, raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return RuleError(f"cannot read: {exc}", path=str(path))


def _load_file(
    path: Path, cache: RuleCache | None = None, shared: SharedLists = NO_SHARED_LISTS
) -> tuple[list[CompiledRule], list[RuleError]]:
    read = _read(path)
    if isinstance(read, RuleError):
        return [], [read]
    raw, text = read
    key = raw + b"\0" + shared.digest  # the shared lists are part of what it compiles to
    if cache is not None:
        cached = cache.get(path, key)
        if cached is not None:
            return cached, []
    compiled, errors = _compile_file(str(path), text, shared)
    if cache is not None and not errors:
        cache.put(path, key, compiled)
    return compiled, errors


def _load_shared_lists(paths: Sequence[Path]) -> tuple[SharedLists, list[RuleError]]:
    """The lists of the shared list files (`*.lists.yaml`), in the order given."""
    lists: dict[str, Node] = {}
    origin: dict[str, str] = {}
    errors: list[RuleError] = []
    digest = hashlib.sha256()
    for path in paths:
        read = _read(path)
        if isinstance(read, RuleError):
            errors.append(read)
            continue
        raw, text = read
        digest.update(str(path).encode() + b"\0" + raw + b"\0")
        parsed = _yaml_document(str(path), text)
        if isinstance(parsed, RuleError):
            errors.append(parsed)
            continue
        data, root = parsed
        name = str(path)
        if set(data) != {"lists"}:
            errors.append(
                RuleError(
                    f"a shared list file ({LISTS_SUFFIX}) holds 'lists' and nothing else",
                    path=name,
                    line=1,
                )
            )
            continue
        compiled = _compile_lists(name, data["lists"], _list_nodes(root), errors)
        for list_name, node in compiled.items():
            if list_name in origin:
                errors.append(_defined_twice(name, root, list_name, origin[list_name]))
                continue
            lists[list_name] = node
            origin[list_name] = name
    return SharedLists(lists, origin, digest.digest() if paths else b""), errors


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping. Plain YAML keeps the
    last, silently: a second `rules:` block would drop every rule of the first, a second
    `query:` replace the first, and no error would say a rule was gone."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *base": overriding what a merge brings is its point
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                continue  # an unhashable key: the base constructor says what is wrong
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key '{key}' twice (first on line {first}); YAML would keep "
                    "only the last",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _yaml_document(name: str, text: str) -> tuple[dict[str, Any], yaml.MappingNode] | RuleError:
    """The file's top-level mapping, as data and as the YAML node (for line numbers)."""
    loader = _UniqueKeyLoader(text)
    try:
        root = loader.get_single_node()
        data: Any = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return RuleError(f"invalid YAML: {getattr(exc, 'problem', exc)}", path=name, line=line)
    finally:
        loader.dispose()
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        what = "'lists'" if name.endswith(LISTS_SUFFIX) else "a 'rules' list"
        return RuleError(f"expected a mapping with {what}", path=name, line=1)
    return data, root


def _list_nodes(root: yaml.MappingNode) -> dict[str, yaml.Node]:
    """The YAML nodes of the file's lists, by name."""
    for key, value in root.value:
        if key.value == "lists" and isinstance(value, yaml.MappingNode):
            return {k.value: v for k, v in value.value if isinstance(k, yaml.ScalarNode)}
    return {}


def _defined_twice(name: str, root: yaml.MappingNode, list_name: str, first: str) -> RuleError:
    """The error for a list that file `name` defines when `first` already did."""
    node = _list_nodes(root).get(list_name)
    return RuleError(
        f"list '{list_name}' is already defined in {first}",
        path=name,
        line=node.start_mark.line + 1 if node is not None else None,
    )


def _compile_file(
    name: str, text: str, shared: SharedLists = NO_SHARED_LISTS
) -> tuple[list[CompiledRule], list[RuleError]]:
    parsed = _yaml_document(name, text)
    if isinstance(parsed, RuleError):
        return [], [parsed]
    data, root = parsed
    rule_nodes: list[yaml.Node] = []
    for key, value in root.value:
        if key.value == "rules" and isinstance(value, yaml.SequenceNode):
            rule_nodes = list(value.value)
    errors: list[RuleError] = []
    own = _compile_lists(name, data.get("lists", {}), _list_nodes(root), errors)
    errors.extend(
        _defined_twice(name, root, list_name, shared.origin[list_name])
        for list_name in own
        if list_name in shared.origin
    )
    lists = {**shared.lists, **own}
    extra = set(data) - {"rules", "lists"}
    if extra:
        errors.append(
            RuleError(f"unknown top-level key(s): {', '.join(sorted(extra))}", path=name, line=1)
        )
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list):
        return [], [*errors, RuleError("'rules' must be a list", path=name, line=1)]
    compiled: list[CompiledRule] = []
    for index, raw in enumerate(raw_rules):
        node = rule_nodes[index] if index < len(rule_nodes) else root
        line = node.start_mark.line + 1
        rule_id = raw.get("id") if isinstance(raw, dict) else None
        rule_id = rule_id if isinstance(rule_id, str) else None
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            for e in exc.errors(include_url=False, include_input=False):
                loc = ".".join(str(p) for p in e["loc"])
                errors.append(
                    RuleError(f"{loc}: {e['msg']}", path=name, line=line, rule_id=rule_id)
                )
            continue
        try:
            ast = parse_query(rule.query, lists=lists)
        except QuerySyntaxError as exc:
            # Point at the end of the text, not at a folded scalar's trailing newline.
            column = min(exc.column, len(rule.query.rstrip()) + 1)
            qline, qcol = line, None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if key.value == "query":
                        qline, qcol = _query_position(value, column)
            errors.append(
                RuleError(exc.message, path=name, line=qline, column=qcol, rule_id=rule.id)
            )
            continue
        compiled.append(CompiledRule(rule, ast, name, line))
    return compiled, errors


def _compile_lists(
    name: str, raw: Any, nodes: dict[str, yaml.Node], errors: list[RuleError]
) -> dict[str, Node]:
    """The file's named term lists, parsed; problems are appended to `errors`."""
    if not isinstance(raw, dict):
        errors.append(RuleError("'lists' must be a mapping of names to queries", path=name))
        return {}
    out: dict[str, Node] = {}
    for list_name, query in raw.items():
        node = nodes.get(str(list_name))
        line = node.start_mark.line + 1 if node is not None else None
        if not isinstance(list_name, str) or not LIST_NAME.fullmatch(list_name):
            errors.append(
                RuleError(
                    f"list name {list_name!r} must be lower-case letters, digits, '_' or '-'",
                    path=name,
                    line=line,
                )
            )
            continue
        if not isinstance(query, str):
            errors.append(RuleError(f"list '{list_name}' must be a query", path=name, line=line))
            continue
        try:
            out[list_name] = parse_query(query)
        except QuerySyntaxError as exc:
            qline, qcol = line, None
            if node is not None:
                qline, qcol = _query_position(node, min(exc.column, len(query.rstrip()) + 1))
            errors.append(
                RuleError(f"list '{list_name}': {exc.message}", path=name, line=qline, column=qcol)
            )
    return out


def rule_files(paths: Iterable[Path]) -> list[Path]:
    """The YAML files named, and those under the directories named, in a stable order."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml")))
        else:
            out.append(p)
    return out


def load_rules(
    paths: Iterable[Path], *, cache: RuleCache | None = None
) -> tuple[list[CompiledRule], list[RuleError]]:
    """Load every rule file; returns the good rules and every error found.

    With a cache, unchanged files that loaded cleanly before are not re-parsed.
    """
    rules: list[CompiledRule] = []
    errors: list[RuleError] = []
    seen: dict[str, CompiledRule] = {}
    list_files: list[Path] = []
    files: list[Path] = []
    for path in rule_files(paths):
        if not path.exists():
            errors.append(RuleError("no such file or directory", path=str(path)))
        else:
            (list_files if path.name.endswith(LISTS_SUFFIX) else files).append(path)
    shared, list_errors = _load_shared_lists(list_files)
    errors.extend(list_errors)
    for path in files:
        with gc_paused():  # see watcher.gcpause: the rules stay alive
            good, bad = _load_file(path, cache, shared)
        errors.extend(bad)
        for rule in good:
            first = seen.get(rule.rule.id)
            if first is not None:
                errors.append(
                    RuleError(
                        f"duplicate rule id (first defined at {first.path}:{first.line})",
                        path=rule.path,
                        line=rule.line,
                        rule_id=rule.rule.id,
                    )
                )
                continue
            seen[rule.rule.id] = rule
            rules.append(rule)
    return rules, errors


def load_matcher(paths: Iterable[Path]) -> Matcher:
    """Load rules for the service: any error is fatal (raises the first RuleError)."""
    rules, errors = load_rules(paths)
    if errors:
        raise errors[0]
    return Matcher(rules)


def check_examples(rule: CompiledRule) -> list[str]:
    """Run a rule's examples; returns one message per failing example."""
    failures = []
    for example in rule.rule.examples.match:
        if not rule.node.matches(example_document(example)):
            failures.append(f"should match but does not: {_show_example(example)}")
    for example in rule.rule.examples.no_match:
        if rule.node.matches(example_document(example)):
            failures.append(f"should not match but does: {_show_example(example)}")
    return failures


def _show_example(example: Example) -> str:
    if isinstance(example, str):
        return repr(example)
    return repr(example.model_dump(exclude_defaults=True))
