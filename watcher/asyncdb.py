"""SQLAlchemy's asyncio engine, without the ORM that its package imports.

`sqlalchemy.ext.asyncio`'s ``__init__`` also imports its ORM session support,
and with it all of `sqlalchemy.orm` (~6 MB of resident memory); watcher uses
only the engine and its connections. This module loads
`sqlalchemy.ext.asyncio.engine` under its package before the package's
``__init__`` has run, and puts the engine's and results' names on the package.
The first time anything asks the package for another name (``AsyncSession``,
say), the package runs its own ``__init__``, so any other importer in the
process still sees the whole package. Already imported in full (by a test, or
by an application that embeds watcher): used as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

_PACKAGE = "sqlalchemy.ext.asyncio"
_SUBMODULES = frozenset({"base", "engine", "exc", "result"})  # what the engine imports
# What the package's __init__ takes from those two (SQLAlchemy 2.x).
_ENGINE_NAMES = (
    "AsyncConnection",
    "AsyncEngine",
    "AsyncTransaction",
    "async_engine_from_config",
    "create_async_engine",
    "create_async_pool_from_url",
)
_RESULT_NAMES = ("AsyncMappingResult", "AsyncResult", "AsyncScalarResult", "AsyncTupleResult")


def _without_orm() -> ModuleType:
    """`sqlalchemy.ext.asyncio.engine`, loaded without running its package's ``__init__``."""
    spec = importlib.util.find_spec(_PACKAGE)
    if _PACKAGE in sys.modules or spec is None or spec.loader is None:
        return importlib.import_module(f"{_PACKAGE}.engine")
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)

    def whole(name: str) -> Any:
        # Submodules are attributes too: the import system asks for them while they load.
        if name.startswith("__") or name in _SUBMODULES:
            raise AttributeError(name)
        del package.__getattr__
        loader.exec_module(package)  # the package's own __init__, ORM and all
        return getattr(package, name)

    package.__getattr__ = whole  # type: ignore[method-assign]
    sys.modules[_PACKAGE] = package
    try:
        engine = importlib.import_module(f"{_PACKAGE}.engine")
        result = importlib.import_module(f"{_PACKAGE}.result")
    except BaseException:
        del sys.modules[_PACKAGE]
        raise
    for module, names in ((engine, _ENGINE_NAMES), (result, _RESULT_NAMES)):
        for name in names:
            setattr(package, name, getattr(module, name))
    return engine


if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
else:
    _engine = _without_orm()
    AsyncConnection = _engine.AsyncConnection
    AsyncEngine = _engine.AsyncEngine
    create_async_engine = _engine.create_async_engine

__all__ = ["AsyncConnection", "AsyncEngine", "create_async_engine"]
