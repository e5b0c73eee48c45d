"""The subscribers of every workspace: from settings, and those created through the API (kept in the state
store, read through a short cache): what the worker routes to, and the relay's signing secrets."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.settings import Settings
from stores.outbox import Outbound, OutboundType, StoredSubscription, Subscription, SubscriptionStore


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


class StoredLookup:
    """The API-created subscribers of a workspace, cached for `ttl_seconds`: the worker asks on every settled
    event, so a cache keeps that from being a store read each time, while a change made through the API
    (by another process, say the API function on AWS) is seen within the TTL."""

    def __init__(self, store: SubscriptionStore, ttl_seconds: float = 10.0) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list[StoredSubscription]]] = {}

    def stored(self, workspace: str) -> list[StoredSubscription]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(workspace)
            if hit is not None and now - hit[0] < self.ttl_seconds:
                return hit[1]
        found = self.store.list_subscriptions(workspace)
        with self._lock:
            self._cache[workspace] = (now, found)
        return found

    def forget(self, workspace: str) -> None:
        """A change made in this process is seen at once."""
        with self._lock:
            self._cache.pop(workspace, None)

    def subscriptions(self, workspace: str) -> list[Subscription]:
        return [s.subscription for s in self.stored(workspace)]

    def secret(self, workspace: str, subscriber: str) -> str | None:
        for s in self.stored(workspace):
            if s.id == subscriber:
                return s.secret
        return None


def secret_lookup(subscribers: Subscribers, stored: StoredLookup | None) -> Callable[[str, str], str | None]:
    """The relay's signing secret of (workspace, subscriber id): from settings, else from the store."""

    def secret_for(workspace: str, subscriber: str) -> str | None:
        found = subscribers.secrets.get((workspace, subscriber))
        if found is None and stored is not None:
            found = stored.secret(workspace, subscriber)
        return found

    return secret_for
