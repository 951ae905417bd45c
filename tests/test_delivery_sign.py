"""The Hearsay-Signature header: what a consumer checks before trusting a webhook."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.delivery import events
from app.delivery.events import CallRef
from app.delivery.sign import sign, verify
from app.pipeline.types import Transcript

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


DOCS = Path(__file__).resolve().parent.parent / "docs" / "webhooks.md"


def doc_snippet(name: str) -> str:
    """The fenced code block that follows `<!-- snippet: name -->` in docs/webhooks.md."""
    text = DOCS.read_text()
    after = text.split(f"<!-- snippet: {name} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def signed_cases() -> list[tuple[bytes, str, bool]]:
    """(body, header, valid?) for a real event body signed by Hearsay, and tampered copies."""
    body = events.utterance_final(
        CallRef(id="c1", source="stream", from_="a", to="b", dialplan="default"),
        Transcript(0, "Hello, café ✓", 0.5, 1.5, True, 0.9, "en"), url="http://x", secret="whsec_doc").body
    header = sign("whsec_doc", body)
    old = sign("whsec_doc", body, timestamp=int(time.time()) - 3600)
    return [(body, header, True), (body + b" ", header, False), (body, old, False),
            (body, sign("whsec_other", body), False), (body, "garbage", False),
            (body, f"{sign('whsec_other', body)},{header.split(',')[1]}", True)]


def test_docs_python_snippet_verifies_hearsay_signatures() -> None:
    namespace: dict[str, object] = {}
    exec(compile(doc_snippet("verify-python"), str(DOCS), "exec"), namespace)
    verify_hearsay = namespace["verify_hearsay"]
    assert callable(verify_hearsay)
    assert [verify_hearsay("whsec_doc", body, header) for body, header, _ in signed_cases()] == [
        valid for _, _, valid in signed_cases()]


@pytest.mark.process
def test_docs_node_snippet_verifies_hearsay_signatures(tmp_path: Path) -> None:
    cases = signed_cases()
    for i, (body, _, _) in enumerate(cases):
        (tmp_path / f"body{i}").write_bytes(body)
    harness = (
        "\nconst fs = require('node:fs');\n"
        f"const cases = {json.dumps([h for _, h, _ in cases])};\n"
        "const results = cases.map((h, i) => verifyHearsay('whsec_doc', "
        f"fs.readFileSync({json.dumps(str(tmp_path))} + '/body' + i), h));\n"
        "console.log(JSON.stringify(results));\n"
    )
    script = tmp_path / "verify.js"
    script.write_text(doc_snippet("verify-node") + harness)
    done = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(done.stdout) == [valid for _, _, valid in cases]


@given(secret=st.text(min_size=1), body=st.binary(), other=st.binary())
def test_any_body_round_trips_and_any_other_body_fails(secret: str, body: bytes, other: bytes) -> None:
    header = sign(secret, body)
    assert verify(secret, body, header)
    assert verify(secret, other, header) is (other == body)


@given(header=st.text())
def test_arbitrary_headers_never_raise(header: str) -> None:
    assert verify("k", BODY, header) in (True, False)
