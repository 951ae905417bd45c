"""Kamailio's generated configuration (sip/proxy_config.py): what the plan puts where.
Whether Kamailio does what it says is tests/test_sip_proxy.py's business."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip.proxy_config import ProxyPlan, render_config, render_dispatcher_list


def test_the_config_names_each_worker_and_the_plan(tmp_path: Path) -> None:
    plan = ProxyPlan("192.0.2.5", 5060, ("udp", "tcp"), ("10.0.0.0/8", "198.51.100.7"),
                     (("127.0.0.1", 5071), ("10.1.2.3", 5060)), pike_density=40)
    config = render_config(plan, tmp_path / "dispatcher.list")
    assert "listen=udp:192.0.2.5:5060\nlisten=tcp:192.0.2.5:5060\n" in config
    assert '#!define ALLOW_FROM "10.0.0.0/8,198.51.100.7/32"' in config
    assert 'modparam("pike", "reqs_density_per_unit", 40)' in config
    assert render_dispatcher_list(plan).splitlines()[1:] == [
        "1 sip:127.0.0.1:5071 0 2 duid=w0;maxload=4", "1 sip:10.1.2.3:5060 0 1 duid=w1;maxload=4"]
    three = ProxyPlan("127.0.0.1", 5060, ("udp",), (), tuple(("127.0.0.1", 5071 + i) for i in range(3)), max_calls=10)
    assert [line.rsplit(";", 1)[1] for line in render_dispatcher_list(three).splitlines()[1:]] == [
        "maxload=4", "maxload=4", "maxload=2"]  # [sip] max_calls = 10, not 12
    wildcard = render_config(ProxyPlan("0.0.0.0", 5060, ("udp",), (), (("127.0.0.1", 5071),)))
    assert "port=5060" in wildcard and "listen=" not in wildcard and "disable_tcp=yes" in wildcard
    assert "#!define WITH_ALLOW_FROM" not in wildcard
    with pytest.raises(ValueError, match="sip.allow_from entry 'ten' is not an address or CIDR"):
        render_config(ProxyPlan("127.0.0.1", 5060, ("udp",), ("ten",), (("127.0.0.1", 5071),)))
    with pytest.raises(ValueError, match="the proxy speaks udp and tcp"):
        render_config(ProxyPlan("127.0.0.1", 5060, ("tls",), (), (("127.0.0.1", 5071),)))
