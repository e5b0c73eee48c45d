"""The relay: sends outbox deliveries to subscribers, signed the Standard Webhooks way, until they succeed or
give up.

Each attempt:

1. *claim* the delivery (`OutboxStore.claim`: pending and due; leased so no other relay sends it meanwhile);
2. *check* the URL against the SSRF rules again (`stores.ssrf.check_url`: DNS can change between attempts)
   and connect to exactly the address that was checked;
3. *sign* with the subscriber's secret (the official `standardwebhooks` library) and a fresh timestamp (a
   receiver refuses stale timestamps, so a retry hours later must not reuse the first one); `webhook-id`
   is the delivery's message id on every attempt, so receivers can deduplicate;
4. *record*: a 2xx answer is `delivered`; anything else (a non-2xx status, a redirect, a timeout, a
   refused URL) waits `backoff(attempts)` and is tried again, until `max_attempts` or `max_age_hours`, then
   it is `failed`. The status and the start of the last answer are kept (`GET /webhook-deliveries`).

Redirects are not followed: a 3xx could point anywhere, including inside the network the URL check
protects.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
from standardwebhooks.webhooks import Webhook

from app.settings import OutboundSettings
from stores.outbox import Delivery, DeliveryAttempt, DeliveryStatus, OutboxStore
from stores.ssrf import GuardedBackend, GuardedTransport, Resolver, UnsafeURLError, check_url, system_resolver
from stores.telemetry import DELIVERY_ATTEMPTS, DELIVERY_SECONDS, bind

log = logging.getLogger(__name__)

RESPONSE_KEPT_BYTES = 1024  # the start of a receiver's answer kept for the operator
ALLOW_HINT = "allow receivers on your own network with EVENTRAG_OUTBOUND__ALLOW_PRIVATE=true"
USER_AGENT = "eventrag-webhooks/0.1"


class OutboundRelay:
    def __init__(
        self,
        store: OutboxStore,
        secret_for: Callable[[str, str], str | None],
        config: OutboundSettings,
        *,
        client: httpx.Client | None = None,
        resolver: Resolver = system_resolver,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.secret_for = secret_for
        self.config = config
        self.resolver = resolver
        self.jitter = jitter
        # The guarded transport resolves each host itself and connects only to an address the SSRF rules
        # allow; trust_env=False: a proxy from the environment would resolve names itself.
        backend = GuardedBackend(allow_private=config.allow_private, hint=ALLOW_HINT, resolver=self._resolve)
        self.client = client or httpx.Client(
            transport=GuardedTransport(backend), timeout=config.timeout_seconds, follow_redirects=False, trust_env=False
        )

    def _resolve(self, host: str, port: int) -> Sequence[str]:
        return self.resolver(host, port)

    def close(self) -> None:
        self.client.close()

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after `attempts` failed ones: doubling from `backoff_seconds`,
        capped, with "equal jitter" (half fixed, half random) so receivers recovering from an outage are not
        hit by every sender at the same instant, and no retry comes sooner than half the schedule."""
        base = min(self.config.backoff_max_seconds, self.config.backoff_seconds * 2 ** max(0, attempts - 1))
        return base * (0.5 + 0.5 * self.jitter())

    @property
    def lease_seconds(self) -> float:
        return self.config.timeout_seconds * 3 + 5

    def deliver_due(self, limit: int = 50) -> int:
        """Attempt every delivery due now (at most `limit`, `concurrency` at a time, so one slow receiver
        does not hold back the others); returns how many were attempted."""
        due = [d.delivery_id for d in self.store.due_deliveries(datetime.now(UTC), limit)]
        if len(due) <= 1 or self.config.concurrency == 1:
            return sum(self.attempt(d) is not None for d in due)
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(due))) as pool:
            return sum(result is not None for result in pool.map(self.attempt, due))

    def attempt(self, delivery_id: str) -> Delivery | None:
        """One attempt of one delivery, if it is due and nobody else holds it. Returns the updated record."""
        d = self.store.claim(delivery_id, datetime.now(UTC), self.lease_seconds)
        if d is None:
            return None
        with bind(delivery_id=d.delivery_id, workspace=d.workspace, file_id=d.file_id, event_id=d.event_id):
            started = time.perf_counter()
            status, response, error = self._send(d)
            DELIVERY_SECONDS.observe(time.perf_counter() - started)
            return self._record(d, status, response, error)

    def _send(self, d: Delivery) -> tuple[int | None, str | None, str | None]:
        """(HTTP status, start of the answer, error) of one POST."""
        secret = self.secret_for(d.workspace, d.subscriber)
        if secret is None:
            return None, None, f"subscriber {d.subscriber!r} is no longer configured for workspace {d.workspace!r}"
        try:
            # Scheme, credentials and literal addresses now; names are resolved and checked at connect time.
            check_url(d.url, allow_private=self.config.allow_private, hint=ALLOW_HINT, resolver=None)
        except UnsafeURLError as exc:
            return None, None, str(exc)
        sent = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": d.message_id,
            "webhook-timestamp": str(int(sent.timestamp())),
            "webhook-signature": Webhook(secret).sign(d.message_id, sent, d.body),
        }
        try:
            with self.client.stream("POST", d.url, content=d.body.encode(), headers=headers) as resp:
                kept = bytearray()
                for part in resp.iter_bytes():
                    kept.extend(part)
                    if len(kept) >= RESPONSE_KEPT_BYTES:
                        break
                text = bytes(kept[:RESPONSE_KEPT_BYTES]).decode("utf-8", "replace")
                error = None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"
                if 300 <= resp.status_code < 400:
                    error = f"HTTP {resp.status_code}: redirects are not followed (configure the final URL)"
                return resp.status_code, text, error
        except UnsafeURLError as exc:  # refused by the guarded transport after resolving the host
            return None, None, str(exc)
        except httpx.HTTPError as exc:
            return None, None, f"{type(exc).__name__}: {exc}"

    def _record(self, d: Delivery, status: int | None, response: str | None, error: str | None) -> Delivery:
        now = datetime.now(UTC)
        attempts = d.attempts + 1
        if error is None:
            result = DeliveryAttempt(DeliveryStatus.DELIVERED, now, status, response)
            DELIVERY_ATTEMPTS.labels("delivered").inc()
            log.info("delivered %s %s to %s (attempt %d)", d.type.value, d.message_id, d.url, attempts)
            return self.store.record_attempt(d.delivery_id, result)
        age = now - d.created_at
        if attempts >= self.config.max_attempts or age >= timedelta(hours=self.config.max_age_hours):
            result = DeliveryAttempt(DeliveryStatus.FAILED, now, status, response, error)
            DELIVERY_ATTEMPTS.labels("failed").inc()
            log.warning(
                "gave up delivering %s %s to %s after %d attempt(s): %s",
                d.type.value,
                d.message_id,
                d.url,
                attempts,
                error,
            )
            return self.store.record_attempt(d.delivery_id, result)
        delay = self.backoff(attempts)
        result = DeliveryAttempt(DeliveryStatus.PENDING, now + timedelta(seconds=delay), status, response, error)
        DELIVERY_ATTEMPTS.labels("retry").inc()
        log.info("delivery %s to %s failed (%s); attempt %d in %.1f s", d.message_id, d.url, error, attempts + 1, delay)
        return self.store.record_attempt(d.delivery_id, result)


class RelayLoop:
    """The local relay in a background thread (`eventrag serve`): woken when the worker writes deliveries,
    otherwise polling every `poll_seconds`. Deliveries left by a crash are simply due on the next run."""

    def __init__(self, relay: OutboundRelay, *, poll_seconds: float = 1.0) -> None:
        self.relay = relay
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        last_purge = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_purge > 3600:
                    last_purge = time.monotonic()
                    self._purge()
                n = self.relay.deliver_due()
            except Exception:
                log.exception("outbound relay error; continuing")
                n = 0
            if n == 0:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def _purge(self) -> None:
        purge = getattr(self.relay.store, "purge", None)  # DynamoDB forgets by TTL instead
        if purge is not None:
            cutoff = datetime.now(UTC) - timedelta(days=self.relay.config.retention_days)
            if purged := purge(cutoff):
                log.info("forgot %d delivered or failed delivery(ies) older than %s", purged, cutoff)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="eventrag-outbound", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
