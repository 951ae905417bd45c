"""Small shared definitions of the SIP side, light enough for both the service and a worker."""

from __future__ import annotations

from collections.abc import Callable

SAMPLE_RATE = 8000  # the conference bridge's rate: what a call's tap gives and its player takes

# A transfer's progress, reported as report(code, reason, final): the REFER's 2xx comes as
# (100, "Accepted", False), then each NOTIFY's sipfrag status (final once the subscription
# ends); a refused REFER as its answer (e.g. 603), one never sent as (0, why, True).
TransferReport = Callable[[int, str, bool], None]
