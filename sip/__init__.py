"""The SIP user agent: the only package that imports pjsua2.

`sip.agent.SipAgent` is the asyncio-facing object the service runs; `sip.endpoint` keeps the
pjsua2 library on its own thread, `sip.account` and `sip.call` are its pjsua2 subclasses,
`sip.media` is a call's outbound side (what the caller hears), and `sip.screen` decides which
INVITEs are taken (pure functions, no pjsua2).
"""
