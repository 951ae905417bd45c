"""Webhook delivery: event bodies, signatures, the durable outbox and the delivery worker.

    events.py   WebhookEvent and one builder per event type (the exact JSON body)
    sign.py     the Hearsay-Signature header: sign() and verify()
    outbox.py   Outbox: every event committed to SQLite (WAL) before delivery
    worker.py   Deliverer: signed POSTs in per-call order, retries, dead letters, 410
    outbox_cli.py  `python -m app outbox list|retry|purge`
"""

from app.delivery.events import CallRef, EventType, WebhookEvent
from app.delivery.outbox import Outbox, OutboxRecord, Status
from app.delivery.sign import sign, verify
from app.delivery.worker import Deliverer, DeliveryResult, Outcome

__all__ = [
    "CallRef",
    "Deliverer",
    "DeliveryResult",
    "EventType",
    "Outbox",
    "OutboxRecord",
    "Outcome",
    "Status",
    "WebhookEvent",
    "sign",
    "verify",
]
