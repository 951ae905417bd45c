"""Errors the SIP side raises to the service (no pjsua2 here, so the service can catch them)."""


class SipStartError(RuntimeError):
    """SIP could not start (a port is taken, a worker or the proxy would not start, Kamailio is
    missing); the message says why in one line."""
