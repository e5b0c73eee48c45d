"""Outbound webhooks: tell subscribers what happened to the index (`document.indexed`, `document.failed`, ...).

- `subscriptions.py`: the subscribers of each workspace, from `EVENTRAG_OUTBOUND_WEBHOOKS`.
- `relay.py`: sends the deliveries the worker wrote to the outbox, Standard Webhooks-signed, retried with
  exponential backoff and jitter, to URLs that pass the SSRF rules of `stores.ssrf`.
"""
