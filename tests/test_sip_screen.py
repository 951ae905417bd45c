"""Screening INVITEs (sip/screen.py): Request-URI users, allow_from, digest auth, refusals."""

from __future__ import annotations

import hashlib

from sip.screen import DigestAuth, Offer, Screen, Verdict, address_uri, header, request_user, source_ip

INVITE = ("INVITE sip:100@10.0.0.5:5060;transport=udp SIP/2.0\r\n"
          "Call-ID: abc@host\r\nFrom: \"Al\" <sip:al@pbx>;tag=1\r\nTo: <sip:100@10.0.0.5>\r\n\r\nv=0\r\n")


def offer(message: str = INVITE, ip: str = "10.0.0.9") -> Offer:
    return Offer("abc@host", "sip:al@pbx", "sip:100@10.0.0.5", request_user(message), ip, message)


def test_request_uri_user_and_headers() -> None:
    assert request_user(INVITE) == "100"
    assert request_user("INVITE sip:support%20line@h SIP/2.0\r\n") == "support line"
    assert request_user("INVITE tel:+15550001111 SIP/2.0\r\n") == "+15550001111"
    assert request_user("INVITE sip:host.example SIP/2.0\r\n") == ""
    assert request_user("\x00garbage") == ""
    assert header(INVITE, "call-id", "i") == "abc@host"
    assert address_uri(header(INVITE, "From")) == "sip:al@pbx"
    assert source_ip("127.0.0.1:5061") == "127.0.0.1"
    assert source_ip("[::1]:5061") == "::1"


def test_refusals_in_order() -> None:
    screen = Screen(["10.0.0.0/24"], None, max_calls=1)
    assert screen.check(offer(ip="192.168.1.1"), 0) == Verdict(403, "Forbidden")
    assert screen.check(offer(), 1) == Verdict(486, "Busy Here")
    assert screen.check(offer(), 0) is None


def test_digest_challenge_and_answer() -> None:
    auth = DigestAuth("pbx", "s3cret")
    challenge = dict(auth.challenge().headers)["WWW-Authenticate"]
    nonce = challenge.split('nonce="')[1].split('"')[0]

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1, ha2 = md5("pbx:hearsay:s3cret"), md5("INVITE:sip:100@h")
    good = md5(f"{ha1}:{nonce}:00000001:xyz:auth:{ha2}")
    header_value = (f'Digest username="pbx", realm="hearsay", nonce="{nonce}", uri="sip:100@h", '
                    f'response="{good}", qop=auth, nc=00000001, cnonce="xyz", algorithm=MD5')
    assert auth.verify("INVITE", header_value)
    assert not auth.verify("INVITE", header_value.replace(good, "0" * 32))
    assert not auth.verify("INVITE", header_value.replace(nonce, "1." + "0" * 32))
    screen = Screen([], auth, max_calls=4)
    assert screen.check(offer(), 0).code == 401  # type: ignore[union-attr]


def test_a_nonce_from_one_worker_is_good_at_another() -> None:
    key = b"k" * 32
    first, second = DigestAuth("pbx", "s3cret", key=key), DigestAuth("pbx", "s3cret", key=key)
    nonce = dict(first.challenge().headers)["WWW-Authenticate"].split('nonce="')[1].split('"')[0]
    assert second._nonce_fresh(nonce)
    assert not DigestAuth("pbx", "s3cret")._nonce_fresh(nonce)
