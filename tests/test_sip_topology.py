"""From `[sip]` to processes (sip/topology.py)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from app.settings import SipRegistration, SipSettings
from sip.topology import WorkerConfig, plan, worker_count

BASE = SipSettings(host="10.1.2.3", port=5060, rtp_port_start=20000, rtp_port_count=2000,
                   allow_from=["10.0.0.0/8"], registrations=[SipRegistration("pbx.example", "100", "pw")])


def test_up_to_four_calls_one_worker_binds_the_public_port_itself() -> None:
    topology = plan(BASE, nonce_key="ab")
    (worker,) = topology.workers
    assert not topology.proxied and not worker.proxied
    assert worker.sip == BASE and worker.media_host == "10.1.2.3"


def test_more_calls_spread_over_loopback_workers_behind_the_proxy() -> None:
    settings = dataclasses.replace(BASE, max_calls=18)
    topology = plan(settings, nonce_key="ab", worker_ports=[7001, 7002, 7003, 7004, 7005])
    assert worker_count(18) == 5 and topology.proxied
    workers = topology.workers
    assert [w.sip.max_calls for w in workers] == [4, 4, 4, 4, 2]  # 18 in all, as configured
    assert topology.worker_addresses == tuple(("127.0.0.1", p) for p in (7001, 7002, 7003, 7004, 7005))
    for w in workers:
        assert w.sip.transports == ["udp"] and w.sip.allow_from == []  # the proxy enforces it
        assert w.media_host == "10.1.2.3"  # RTP straight to the caller, on the public address
        assert w.outbound_proxy == "sip:10.1.2.3:5060;lr" and w.contact == "10.1.2.3:5060"
    ranges = [range(w.sip.rtp_port_start, w.sip.rtp_port_start + w.sip.rtp_port_count) for w in workers]
    assert all(a.stop <= b.start for a, b in itertools.pairwise(ranges))
    assert ranges[0].start == 20000 and ranges[-1].stop <= 22000
    assert [len(w.sip.registrations) for w in workers] == [1, 0, 0, 0, 0]  # one registers the trunk


def test_a_worker_config_survives_json() -> None:
    topology = plan(dataclasses.replace(BASE, max_calls=8), nonce_key="ab", worker_ports=[7001, 7002])
    for worker in topology.workers:
        assert WorkerConfig.from_json(worker.to_json()) == worker


def test_an_rtp_range_too_small_to_share_is_refused() -> None:
    with pytest.raises(ValueError, match="sip.rtp_port_count = 40 leaves 6 ports to each of 6 SIP workers"):
        plan(dataclasses.replace(BASE, max_calls=24, rtp_port_count=40), nonce_key="ab")
