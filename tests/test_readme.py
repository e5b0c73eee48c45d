"""The README is the front door: every setting and every status a user can meet is named in it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import pytest
from pydantic import BaseModel

from app.settings import Settings
from stores.events import EventStatus, EventType
from stores.outbox import DeliveryStatus, OutboundType
from stores.ports import DocumentStatus

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
ROWS = [line for line in README.splitlines() if line.startswith("| `EVENTRAG_")]


def env_names(model: type[BaseModel], prefix: str = "EVENTRAG_") -> Iterator[str]:
    """The environment variable of every setting, nested groups joined with `__` as pydantic-settings reads them."""
    for name, field in model.model_fields.items():
        env = prefix + (field.alias or name).upper()
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from env_names(kind, env + "__")
        else:
            yield env


def documented(env: str) -> bool:
    """Named whole, or in a settings-table row that groups it: `EVENTRAG_X__A` / `__B`, `..._A_TABLE`, `_B_TABLE`,
    or `EVENTRAG_*_SUFFIX`."""
    if re.search(rf"`{re.escape(env)}`", README):
        return True
    for row in ROWS:
        cells = re.findall(r"`([A-Z0-9_*]+)`", row)
        for cell in cells:
            if "*" in cell and re.fullmatch(cell.replace("*", "[A-Z0-9_]+"), env):
                return True
        heads = [c for c in cells if c.startswith("EVENTRAG_")]
        for tail in (c for c in cells if c.startswith("_")):
            if any(env.endswith(tail) and head.startswith(env[: -len(tail)]) for head in heads):
                return True
    return False


@pytest.mark.parametrize("env", sorted(set(env_names(Settings))))
def test_every_setting_is_in_the_readme(env: str) -> None:
    assert documented(env), f"{env} is a setting the README's settings table does not name"


def test_the_check_can_fail() -> None:
    assert not documented("EVENTRAG_NO_SUCH_SETTING")
    assert not documented("EVENTRAG_WORKER__NO_SUCH_LEAF")


@pytest.mark.parametrize(
    "value",
    sorted(
        {
            (enum.__name__, member.value)
            for enum in (EventStatus, DocumentStatus, DeliveryStatus, EventType, OutboundType)
            for member in enum  # type: ignore[attr-defined]
        }
    ),
    ids=lambda v: f"{v[0]}.{v[1]}",
)
def test_every_status_and_event_type_is_in_the_readme(value: tuple[str, StrEnum]) -> None:
    kind, name = value
    assert f"`{name}`" in README, f"{kind} `{name}` is not named in the README"
