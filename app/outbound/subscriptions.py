"""The subscribers of every workspace, from settings: what the worker routes to, and the relay's secrets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from app.settings import Settings
from stores.outbox import Outbound, OutboundType, Subscription


@dataclass(slots=True)
class Subscribers:
    """`outbound` goes to the worker (no secrets); `secrets` to the relay, by (workspace, subscriber id)."""

    outbound: Outbound = field(default_factory=Outbound)
    secrets: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return bool(self.secrets)


def subscriber_id(url: str) -> str:
    """A stable id for a subscriber configured without one: the same URL keeps its deliveries' history."""
    return "sub_" + hashlib.sha256(url.encode()).hexdigest()[:12]


def build_subscribers(settings: Settings) -> Subscribers:
    by_workspace: dict[str, list[Subscription]] = {}
    secrets: dict[tuple[str, str], str] = {}
    for workspace, configured in settings.outbound_webhooks.items():
        for sub in configured:
            sid = sub.id or subscriber_id(sub.url)
            if (workspace, sid) in secrets:
                raise ValueError(
                    f"EVENTRAG_OUTBOUND_WEBHOOKS: workspace {workspace!r} has two subscribers with id {sid!r}"
                    " (the same URL twice, or the same id): give each an `id` of its own"
                )
            secrets[(workspace, sid)] = sub.secret.get_secret_value()
            kinds = frozenset(OutboundType(e) for e in sub.events)
            by_workspace.setdefault(workspace, []).append(Subscription(sid, sub.url, kinds))
    return Subscribers(Outbound(by_workspace), secrets)
