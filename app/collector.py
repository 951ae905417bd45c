"""Python's cycle collector in a long-running service: what start-up loaded is frozen out of it.

A call leaves reference cycles behind when it ends (the call, its engine stream, its event
writer and their tasks refer to one another), so its objects are freed by the cycle
collector, not as soon as the call is over. The collector frees them only in a full
collection, since a call lives long enough for its objects to reach the oldest generation.
CPython runs a full collection only when the objects that reached it since the last one are a
quarter of those already there. After start-up that is about 250 000 objects (modules,
torch, the models), and such a collection takes about 120 ms on this machine. In a soak of
24 SIP callers the service went minutes without one: the tasks, queues and audio of about 230
finished calls waited in memory, and the RSS grew 25 % after minute 5 (`python -m app bench
soak --ingress sip`: 700 MB in minute 1, 934 from minute 20 on).

`freeze_startup` moves everything alive once the service has started into the permanent
generation (`gc.freeze`), which no collection scans. A full collection then reads only what
calls created (a few thousand objects), and runs after every second young (generation 1)
collection instead of every eleventh: about twice a minute at 24 SIP callers, and a call's
cycles go within a minute or so of its end. The same soak then held 666-686 MB for 30
minutes (+2.2 % after minute 5).
"""

from __future__ import annotations

import gc

# Generation 0 and 1 thresholds as CPython's defaults; a full collection after each
# generation-1 collection past the first (the threshold counts collections, "more than 1").
THRESHOLDS = (700, 10, 1)


def freeze_startup() -> None:
    """Collect what start-up left over, freeze the rest, and run full collections often.
    Call once, when the service has loaded everything it keeps for its lifetime."""
    gc.collect()
    gc.freeze()
    # A full collection now (of almost nothing) also resets CPython's count of the objects in
    # the oldest generation, which the freeze leaves at start-up's: until then it would wait
    # for a quarter of those again.
    gc.collect()
    gc.set_threshold(*THRESHOLDS)
