"""The Hearsay-Signature header: what a consumer checks before trusting a webhook."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

import pytest

from app.delivery.sign import sign, verify

BODY = b'{"id":"evt_1","type":"utterance.final","utterance":{"text":"hello"}}'


def test_signature_round_trip() -> None:
    header = sign("whsec_test", BODY)
    assert verify("whsec_test", BODY, header)


def test_header_is_the_documented_hmac() -> None:
    header = sign("whsec_test", BODY, timestamp=1_800_000_000)
    expected = hmac.new(b"whsec_test", b"1800000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1800000000,v1={expected}"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body, header: (body.replace(b"hello", b"hellO"), header),
        lambda body, header: (body + b" ", header),
        lambda body, header: (body, header.replace("t=", "t=1")),
        lambda body, header: (body, header[:-1] + ("0" if header[-1] != "0" else "1")),
    ],
    ids=["body-changed", "body-extended", "timestamp-changed", "digest-changed"],
)
def test_tampering_is_detected(tamper: Callable[[bytes, str], tuple[bytes, str]]) -> None:
    body, header = tamper(BODY, sign("whsec_test", BODY))
    assert not verify("whsec_test", body, header)


def test_wrong_secret_is_rejected() -> None:
    assert not verify("whsec_other", BODY, sign("whsec_test", BODY))


def test_old_or_future_timestamps_are_rejected_as_replays() -> None:
    now = time.time()
    old = sign("k", BODY, timestamp=int(now) - 301)
    assert not verify("k", BODY, old, now=now)
    assert verify("k", BODY, old, tolerance_s=600, now=now)
    assert not verify("k", BODY, sign("k", BODY, timestamp=int(now) + 400), now=now)


def test_any_of_several_signatures_may_match_during_secret_rotation() -> None:
    t = int(time.time())
    new = sign("new", BODY, timestamp=t).split(",")[1]
    old = sign("old", BODY, timestamp=t).split(",")[1]
    header = f"t={t},{old},{new}"
    assert verify("new", BODY, header) and verify("old", BODY, header)


@pytest.mark.parametrize("header", ["", "garbage", "t=abc,v1=00", "v1=00", "t=1", "t=1;v1=2"])
def test_malformed_headers_are_rejected(header: str) -> None:
    assert not verify("k", BODY, header)
