"""No Docker engine runs here: check the Dockerfile's shape, and that what it copies exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_is_slim_non_root_with_healthcheck() -> None:
    ops = instructions()
    known = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK",
             "ENTRYPOINT", "CMD"}  # fmt: skip
    assert {op for op, _ in ops} <= known
    assert ops[0][0] == "FROM" and "slim" in ops[0][1]
    users = [rest for op, rest in ops if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    [health] = [rest for op, rest in ops if op == "HEALTHCHECK"]
    assert "/healthz" in health
    assert any(op == "CMD" and '"run"' in rest for op, rest in ops)
    assert any(op == "ENTRYPOINT" and '"watcher"' in rest for op, rest in ops)


def test_everything_copied_exists() -> None:
    for op, rest in instructions():
        if op == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                assert (REPO / src).exists(), f"Dockerfile copies missing {src}"


def test_a_mounted_config_keeps_its_own_store() -> None:
    """The image sets no store URL in its environment (which would win over a mounted
    config's PostgreSQL URL, silently); its own config points the store at /data."""
    envs = " ".join(rest for op, rest in instructions() if op == "ENV")
    assert "WATCHER_STORE__URL" not in envs
    [edit] = [rest for op, rest in instructions() if op == "RUN" and "config.toml" in rest]
    match = re.search(r"sed -i 's#(.+?)#(.+?)#' config\.toml", edit)
    assert match is not None
    example = (REPO / "config.example.toml").read_text()
    # a sed basic regex: "+" and "." are as in the text, "^" and "$" anchor the line
    literal = "^" + re.escape(match[1].removeprefix("^").removesuffix("$")) + "$"
    edited = re.sub(literal, match[2], example, flags=re.MULTILINE)
    import tomllib

    from watcher.config import Config

    config = Config.model_validate(tomllib.loads(edited))
    assert config.store.url == "sqlite+aiosqlite:////data/watcher.db"
