"""SIP: pjsua2 worker processes (Kamailio in front above 4 calls), bridged to the service.

Service side (no pjsua2): `sip.agent.SipAgent` runs it all and turns each offered call into a
hub call with a `sip.media.SipMedia`; `sip.topology` plans the processes, `sip.workers`
supervises the workers, `sip.proxy`/`sip.proxy_config` run and configure Kamailio.
Worker side (`python -m app sip-worker`): `sip.worker` is the process, `sip.endpoint` keeps the
pjsua2 library on its own thread, `sip.account` and `sip.call` are its pjsua2 subclasses,
`sip.frames` queues what a call plays, and `sip.screen` decides which INVITEs are taken.
`sip.bridge` is the wire between them. Only the worker side imports pjsua2 (docs/sip.md).
"""
