"""Kamailio's configuration for the proxy in front of the SIP workers (sip/proxy.py runs it).

    plan = ProxyPlan(host="0.0.0.0", port=5060, transports=("udp", "tcp"), allow_from=(),
                     workers=(("127.0.0.1", 40101), ("127.0.0.1", 40102)))
    render_config(plan, "dispatcher.list")    # the whole kamailio.cfg
    render_dispatcher_list(plan)               # one line per worker (duid, maxload)

Pure functions: the plan's values go into the head of the file (listen sockets, module
parameters, the worker set and `allow_from`), and `ROUTING`, the same script for every plan,
says what happens to each request (docs/sip.md walks through it).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

LIST_NAME = "dispatcher.list"
SERVER_NAME = "Hearsay proxy (Kamailio)"  # the Server header of Kamailio's own replies
WILDCARDS = ("0.0.0.0", "::", "")
WORKER_SET = 1  # the dispatcher set holding the workers


@dataclass(frozen=True)
class ProxyPlan:
    """What Kamailio does: where it listens, whom it lets in, and the workers it feeds.

    `workers` are (address, UDP port) of each SIP worker, in worker order (worker i gets the
    dispatcher id `w<i>`); `calls_per_worker` is each one's `maxload`. `allow_from` is a list
    of CIDRs (or addresses) allowed to send requests; empty lets anyone in. A source sending
    more than `pike_density` requests in `pike_interval_s` seconds is ignored until it slows
    down. Workers are pinged with OPTIONS every `probe_interval_s`. `max_calls` (`[sip]
    max_calls`; 0: workers x calls_per_worker) caps the last worker's share and names the
    setting in error messages.
    """

    host: str
    port: int
    transports: tuple[str, ...]
    allow_from: tuple[str, ...]
    workers: tuple[tuple[str, int], ...]
    calls_per_worker: int = 4
    pike_density: int = 60
    pike_interval_s: int = 2
    probe_interval_s: int = 2
    max_calls: int = 0

    @property
    def capacity(self) -> int:
        return self.max_calls or len(self.workers) * self.calls_per_worker

    @property
    def probe_address(self) -> tuple[str, int]:
        """Where this machine reaches Kamailio over UDP (loopback for a wildcard host)."""
        if self.host in WILDCARDS:
            return ("::1" if self.host == "::" else "127.0.0.1", self.port)
        return (self.host, self.port)


# -- configuration -----------------------------------------------------------------------------


def render_config(plan: ProxyPlan, list_file: Path | str = LIST_NAME) -> str:
    """The whole kamailio.cfg for `plan`; `list_file` is where its dispatcher list lies
    (`render_dispatcher_list`). Raises ValueError naming a bad address, CIDR or transport."""
    listening = transports(plan.transports)
    if not plan.workers:
        raise ValueError("the proxy needs at least one SIP worker")
    if not 0 < plan.port < 65536:
        raise ValueError(f"sip.port = {plan.port} is not a port")
    for name, value in (("calls_per_worker", plan.calls_per_worker), ("pike_density", plan.pike_density),
                        ("pike_interval_s", plan.pike_interval_s), ("probe_interval_s", plan.probe_interval_s)):
        if value < 1:
            raise ValueError(f"proxy {name} = {value} must be at least 1")
    subnets = ",".join(_cidr(c) for c in plan.allow_from)
    head = [
        "#!KAMAILIO",
        "#",
        "# Kamailio in front of Hearsay's SIP workers, written by sip/proxy.py at every start:",
        "# change Hearsay's [sip] settings, not this file.",
        "#",
        f"#!define WORKERS {WORKER_SET}",
    ]
    if subnets:
        head += ["#!define WITH_ALLOW_FROM", f'#!define ALLOW_FROM "{subnets}"']
    head += [
        "",
        "debug=2",
        "log_stderror=yes",
        "memdbg=5",
        "memlog=5",
        "children=2",
        "auto_aliases=no",
        "rev_dns=no",
        "sip_warning=0",
        f'server_header="Server: {SERVER_NAME}"',
        f'user_agent_header="User-Agent: {SERVER_NAME}"',
    ]
    if "tcp" in listening:
        head += ["tcp_children=2", "tcp_connection_lifetime=3605"]
    else:
        head.append("disable_tcp=yes")
    if plan.host in WILDCARDS:
        # Every interface's own address, so that Via and Record-Route name a real one (a
        # 0.0.0.0 socket would put 0.0.0.0 there); UDP is always on, for the workers' leg.
        # mhomed: send from the socket on the route to the destination, not the one the
        # request came in on (a worker's REGISTER arrives on 127.0.0.1 but goes out to a trunk).
        head += [f"port={plan.port}", "mhomed=1"]
    else:
        host = _address(plan.host, "sip.host")
        # UDP always: the workers speak UDP, and send their own requests here.
        head += [f"listen={proto}:{host}:{plan.port}" for proto in ("udp", "tcp") if proto in {"udp", *listening}]
    head += ["", *(f'loadmodule "{m}.so"' for m in _MODULES), ""]
    params: dict[str, list[tuple[str, int | str]]] = {
        # no DNS failover: every next hop is an address (and it warns on a multihomed host)
        "tm": [("fr_timer", 2000), ("fr_inv_timer", 30000), ("reparse_on_dns_failover", 0)],
        "rr": [("enable_full_lr", 0), ("append_fromtag", 0)],
        "sanity": [("autodrop", 0)],
        "pike": [("sampling_time_unit", plan.pike_interval_s), ("reqs_density_per_unit", plan.pike_density),
                 ("remove_latency", max(4, 2 * plan.pike_interval_s)),
                 ("pike_log_level", 2)],  # its (un)blocking notes at INFO: the script warns once
        "dispatcher": [
            ("list_file", str(list_file)),
            ("flags", 2),  # keep the rest of the set for ds_next_dst()
            ("ds_hash_size", 6),
            ("ds_hash_initexpire", 60),  # an INVITE never answered stops counting after a minute
            ("ds_hash_expire", 7200),  # ... and an answered call whose BYE was lost, after two hours
            ("ds_ping_interval", plan.probe_interval_s),
            ("ds_probing_mode", 1),
            ("ds_probing_threshold", 2),
            ("ds_inactive_threshold", 1),
            ("ds_ping_from", "sip:proxy@hearsay.invalid"),
            # any answer but a timeout says the worker's SIP stack is alive (not 408: tm makes that one)
            ("ds_ping_reply_codes", "class=2;code=403;code=404;code=405;code=480;code=486;code=501;code=503"),
        ],
    }
    for module, values in params.items():
        for name, setting in values:
            quoted = str(setting) if isinstance(setting, int) else f'"{setting}"'
            head.append(f'modparam("{module}", "{name}", {quoted})')
    return "\n".join(head) + "\n" + ROUTING


def render_dispatcher_list(plan: ProxyPlan) -> str:
    """The dispatcher list: one line per worker, `duid=w<i>;maxload=<its calls>`: each carries
    `calls_per_worker`, the last one what is left of `max_calls` when that is given."""
    lines = ["# set  destination  flags  priority  attributes (written by sip/proxy.py)"]
    per = plan.calls_per_worker
    for i, (address, port) in enumerate(plan.workers):
        maxload = max(1, min(per, plan.max_calls - i * per)) if plan.max_calls else per
        if not 0 < port < 65536 or not re.fullmatch(r"[\w.:-]+", address):
            raise ValueError(f"SIP worker address {address}:{port} is not a host and port")
        host = f"[{address}]" if ":" in address else address
        # priorities falling with the index keep the workers in order: ties go to the first
        priority = len(plan.workers) - i
        lines.append(f"{WORKER_SET} sip:{host}:{port} 0 {priority} duid=w{i};maxload={maxload}")
    return "\n".join(lines) + "\n"


def transports(names: tuple[str, ...]) -> tuple[str, ...]:
    """`[sip] transports`, lower-cased and checked (ValueError for any but udp and tcp)."""
    wanted = tuple(t.lower() for t in names)
    bad = [t for t in wanted if t not in ("udp", "tcp")]
    if bad or not wanted:
        raise ValueError(f"sip.transports = {list(names)}: the proxy speaks udp and tcp")
    return wanted


def _cidr(value: str) -> str:
    try:
        return ipaddress.ip_network(value.strip(), strict=False).with_prefixlen
    except ValueError:
        raise ValueError(f"sip.allow_from entry {value!r} is not an address or CIDR") from None


def _address(value: str, name: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{name} = {value!r} is not an IP address") from None
    return f"[{ip}]" if ip.version == 6 else str(ip)


def worker_uri(address: str, port: int) -> str:
    return f"sip:[{address}]:{port}" if ":" in address else f"sip:{address}:{port}"


_MODULES = ("tm", "tmx", "sl", "rr", "pv", "maxfwd", "textops", "siputils", "sanity", "pike", "dispatcher", "ipops",
            "xlog")

# The routing logic: the same for every plan (the head above sets WORKERS and ALLOW_FROM).
ROUTING = r"""
# Requests from Hearsay's workers are trusted (no flood limit, no allow_from); everyone
# else is "outside": flood-limited by pike, held to allow_from, and may only start calls
# (dispatched to the least-loaded worker) or continue dialogs that lead to a worker.
request_route {
	if (ds_is_from_list(WORKERS)) {
		route(CHECKS);
		route(FROM_WORKER);
		exit;
	}
	# Pike counts what starts something (INVITE, REGISTER, OPTIONS, scans), not the ACKs and
	# BYEs of calls under way: a PBX with many calls up must not look like a flood.
	if (!has_totag() && !pike_check_req()) {
		if ($rc == -2) {
			xlog("L_WARN", "hearsay: $si is flooding ($rm): ignoring it until it slows down\n");
		}
		exit;
	}
	route(CHECKS);
#!ifdef WITH_ALLOW_FROM
	if (!is_in_subnet("$si", ALLOW_FROM)) {
		xlog("L_INFO", "hearsay: $rm from $si refused (403): not in sip.allow_from\n");
		if (!is_method("ACK")) {
			sl_send_reply("403", "Forbidden");
		}
		exit;
	}
#!endif
	# Only the proxy says where a request came from.
	remove_hf("X-Hearsay-Source");
	route(FROM_OUTSIDE);
}

route[CHECKS] {
	if (!mf_process_maxfwd_header("10")) {
		sl_send_reply("483", "Too Many Hops");
		exit;
	}
	if (!sanity_check()) {
		xlog("L_INFO", "hearsay: malformed $rm from $si:$sp refused\n");
		exit;
	}
}

route[FROM_OUTSIDE] {
	if (is_method("CANCEL")) {
		# the INVITE's failure_route releases the worker's load on the 487
		if (t_check_trans()) {
			t_relay();
		}
		exit;
	}
	route(RETRANSMISSION);
	if (has_totag()) {
		if (loose_route()) {
			route(ONLY_TO_WORKERS);
			if (is_method("BYE") && check_route_param("hs=ds")) {
				ds_load_update();
			}
			append_hf("X-Hearsay-Source: $si\r\n");
			t_relay();
			exit;
		}
		if (is_method("ACK")) {
			# the ACK of a final failure: hop by hop, absorbed by its transaction
			if (t_check_trans()) {
				t_relay();
			}
			exit;
		}
		sl_send_reply("404", "Not Here");
		exit;
	}
	if (is_method("ACK")) {
		exit;
	}
	if (is_method("OPTIONS")) {
		sl_send_reply("200", "OK");
		exit;
	}
	if (!is_method("INVITE")) {
		append_to_reply("Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n");
		sl_send_reply("405", "Method Not Allowed");
		exit;
	}
	route(DISPATCH);
}

# A retransmitted request is answered by its transaction (which resends the last reply) and
# goes no further: a retransmitted BYE must not release a worker's load twice.
route[RETRANSMISSION] {
	if (!is_method("ACK")) {
		if (t_precheck_trans()) {
			t_check_trans();
			exit;
		}
		t_check_trans();
	}
}

# An in-dialog request from outside goes on only to a worker: the proxy is no open relay.
route[ONLY_TO_WORKERS] {
	$var(next) = $ru;
	if ($du != $null) {
		$var(next) = $du;
	}
	if (!ds_is_from_list(WORKERS, "2", "$var(next)")) {
		xlog("L_INFO", "hearsay: $rm from $si towards $var(next) refused (403): not a worker\n");
		if (!is_method("ACK")) {
			sl_send_reply("403", "Forbidden");
		}
		exit;
	}
}

# A new call: to the worker with the fewest calls (dispatcher algorithm 10, at most
# maxload each). X-Hearsay-Source carries the caller's address to the worker.
route[DISPATCH] {
	if (!ds_select_dst(WORKERS, "10")) {
		if (ds_is_active(WORKERS)) {
			xlog("L_WARN", "hearsay: every worker is busy: $ci from $si refused (486)\n");
			sl_send_reply("486", "Busy Here");
		} else {
			xlog("L_ERR", "hearsay: no worker is up: $ci from $si refused (503)\n");
			append_to_reply("Retry-After: 5\r\n");
			sl_send_reply("503", "Service Unavailable");
		}
		exit;
	}
	record_route();
	add_rr_param(";hs=ds");
	append_hf("X-Hearsay-Source: $si\r\n");
	t_on_reply("WORKER_REPLY");
	t_on_failure("WORKER_FAILED");
	if (!t_relay()) {
		sl_reply_error();
	}
	exit;
}

onreply_route[WORKER_REPLY] {
	if (status =~ "^2") {
		ds_load_update();
	}
}

# A worker refused (486/503), timed out (408) or did not answer: the next worker, if any;
# otherwise the failure goes back to the caller (the best of the last try's replies). A 503
# with a Retry-After is the engine saying it is busy ([asr] max_live_calls, or its finals
# late): every worker shares that engine, so none is tried after it.
failure_route[WORKER_FAILED] {
	if (t_is_canceled()) {
		ds_load_unset();
		exit;
	}
	if (t_branch_timeout() && !t_branch_replied()) {
		xlog("L_WARN", "hearsay: worker $xavp(_dsdst_=>uri) did not answer $ci: marked down\n");
		ds_mark_dst("ip");
	}
	$var(engine_busy) = 0;
	if (t_check_status("503") && $T_rpl($hdr(Retry-After)) != $null) {
		$var(engine_busy) = 1;
	}
	# ds_next_dst() moves the call's load to the next worker, if there is one left to try;
	# ds_load_unset() must come while the worker just tried is still the current one.
	if ((t_branch_timeout() || t_check_status("486|503|408")) && $var(engine_busy) == 0
			&& $xavp(_dsdst_[1]=>uri) != $null) {
		if (ds_next_dst()) {
			xlog("L_INFO", "hearsay: $ci failed on a worker: trying $du\n");
			t_on_reply("WORKER_REPLY");
			t_on_failure("WORKER_FAILED");
			t_relay();
			exit;
		}
	}
	ds_load_unset();
	if (t_check_status("503")) {
		# relayed, a 503 would become 500 (RFC 3261 16.7); the caller should hear "try again
		# shortly" (the service is at [asr] max_live_calls, or a worker is restarting)
		append_to_reply("Retry-After: 5\r\n");
		t_reply("503", "Service Unavailable");
	}
}

# From a worker: in-dialog requests follow their route set; anything else (a REGISTER to a
# trunk, sent with this proxy as outbound proxy) goes to its Request-URI as it is.
route[FROM_WORKER] {
	if (is_method("CANCEL")) {
		if (t_check_trans()) {
			t_relay();
		}
		exit;
	}
	route(RETRANSMISSION);
	if (has_totag()) {
		if (loose_route()) {
			if (is_method("BYE") && check_route_param("hs=ds")) {
				ds_load_update();
			}
			t_set_fr(120000, 10000);
			t_relay();
			exit;
		}
		if (is_method("ACK")) {
			if (t_check_trans()) {
				t_relay();
			}
			exit;
		}
		sl_send_reply("404", "Not Here");
		exit;
	}
	loose_route();
	if (is_method("OPTIONS") && uri == myself) {
		sl_send_reply("200", "OK");
		exit;
	}
	if (is_method("INVITE|SUBSCRIBE|REFER")) {
		record_route();
	}
	t_set_fr(120000, 10000);
	if (!t_relay()) {
		sl_reply_error();
	}
	exit;
}

event_route[dispatcher:dst-down] {
	xlog("L_WARN", "hearsay: worker $ru is down\n");
}

event_route[dispatcher:dst-up] {
	xlog("L_INFO", "hearsay: worker $ru is up\n");
}
"""
