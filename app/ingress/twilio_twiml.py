"""TwiML for the voice webhook: the answers Hearsay gives, and reading them back.

`connect_stream` answers a routed call with `<Connect><Stream url=…>` plus `<Parameter>`s,
a bidirectional Media Stream (Twilio allows only the inbound track there); `reject` refuses
a call no dialplan takes. Both are built with the `twilio` library's `VoiceResponse`, never
by pasting strings. `parse_answer` reads such a document back, for the simulator, which
follows it the way Twilio would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from xml.etree import ElementTree

from twilio.twiml.voice_response import Connect, VoiceResponse

TWIML_CONTENT_TYPE = "application/xml"


def connect_stream(url: str, parameters: Mapping[str, str]) -> str:
    """TwiML that connects the call's audio to the Media Streams socket at `url`."""
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response.to_xml())


def reject(reason: str = "") -> str:
    """TwiML that refuses the call: the caller hears "not in service" (Twilio's default,
    `rejected`), or a busy tone with `reason="busy"`."""
    response = VoiceResponse()
    response.reject(reason=reason or None)
    return str(response.to_xml())


@dataclass(frozen=True, slots=True)
class VoiceAnswer:
    """What a voice webhook's TwiML asks for: a stream (url and parameters) or a rejection."""

    rejected: bool
    stream_url: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)
    reject_reason: str = ""  # `<Reject reason=…>`: "busy", or "" for Twilio's default (rejected)


def parse_answer(twiml: str) -> VoiceAnswer:
    """Read `<Connect|Start><Stream>` or `<Reject>` out of a TwiML document."""
    try:
        root = ElementTree.fromstring(twiml)
    except ElementTree.ParseError as exc:
        raise ValueError(f"TwiML is not XML: {exc}") from None
    if root.tag != "Response":
        raise ValueError(f"TwiML root is <{root.tag}>, expected <Response>")
    refusal = root.find("Reject")
    if refusal is not None:
        return VoiceAnswer(rejected=True, reject_reason=refusal.get("reason", ""))
    stream = root.find("Connect/Stream")
    if stream is None:
        stream = root.find("Start/Stream")
    if stream is None or not stream.get("url"):
        raise ValueError("TwiML has neither <Reject/> nor a <Stream url=…>")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return VoiceAnswer(rejected=False, stream_url=stream.get("url", ""), parameters=parameters)
