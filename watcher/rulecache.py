"""A cache of compiled rule files, keyed by content hash.

Parsing a query and validating a rule costs far more than reading a pickle:
with thousands of rules, start-up and every hot reload would re-parse all of
them. Each rule file that loads without errors is stored, compiled, under
`cache_dir/<sha256 of path, contents and compiler version>.pickle`, where the
contents are the file's bytes and the digest of the shared list files loaded
with it (`*.lists.yaml`, which its queries may use); a file whose contents are
unchanged is loaded from there. The directory must be one
that only watcher writes (a pickle is code). Any problem reading the cache
falls back to parsing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from watcher.rules import CompiledRule

logger = logging.getLogger(__name__)

# Bump when the compiled form (query AST, Rule model) changes shape.
COMPILER_VERSION = "2"  # 2: a key given twice in a mapping is an error (it compiled before)


class RuleCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.hits = 0
        self.misses = 0

    def _file(self, path: Path, data: bytes) -> Path:
        from watcher import __version__  # the package imports this module

        digest = hashlib.sha256()
        for part in (__version__, COMPILER_VERSION, str(path)):
            digest.update(part.encode() + b"\0")
        digest.update(data)
        return self.directory / f"{digest.hexdigest()}.pickle"

    def get(self, path: Path, data: bytes) -> list[CompiledRule] | None:
        try:
            blob = self._file(path, data).read_bytes()
            rules = pickle.loads(blob)
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception as exc:  # a corrupt or foreign file: parse instead
            logger.warning("rule cache: ignoring %s: %s", self._file(path, data), exc)
            self.misses += 1
            return None
        if not isinstance(rules, list):
            self.misses += 1
            return None
        self.hits += 1
        return rules

    def put(self, path: Path, data: bytes, rules: list[CompiledRule]) -> None:
        target = self._file(path, data)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                pickle.dump(rules, out, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, target)
        except OSError as exc:  # a read-only or full disk only costs speed
            logger.warning("rule cache: cannot write %s: %s", target, exc)
