"""Faults a simulated node can be told to show, switched at run time by tests and the demo.

Every field is off by default. ``slow_s`` is real seconds: it is never multiplied by the
cluster's ``time_scale``, so a test of a client timeout means what it says.

What each fault looks like from a client, in the order the middleware applies them
(``SimNode._middleware``): ``down`` refuses or drops the connection; ``hang`` and
``post_hang`` accept the request and answer nothing; ``slow_s`` answers late;
``error_rate`` and ``post_errors`` answer 500; ``malformed_json`` answers a 200 whose JSON is
cut mid-object; inside a stream, ``drop_mid_stream`` aborts the connection and
``truncate_stream`` ends the body cleanly half-way through an event, with no finish and no
``[DONE]``; ``memory_gb`` makes loads fail for want of memory the node said it had.
``tests/faults`` drives each of them through lmtui's router.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Faults:
    """Mutable fault switches of one node; the HTTP layer reads them on every request."""

    #: The port refuses connections. Set it with ``SimNode.set_down`` so the listening
    #: socket really closes (and reopens on the same port); flipping the field directly
    #: only makes the server drop each new request's connection.
    down: bool = False
    #: Accept the request and never answer (until the fault is cleared).
    hang: bool = False
    #: Extra real seconds before every answer.
    slow_s: float = 0.0
    #: Fraction of requests answered 500 with the kind's error JSON.
    error_rate: float = 0.0
    #: Streams cut the connection after a few chunks.
    drop_mid_stream: bool = False
    #: JSON endpoints answer invalid JSON with status 200.
    malformed_json: bool = False
    #: Every POST (inference, loads) answers 500 while the GETs polls read stay fine: an
    #: inference engine that broke behind a healthy ``/health``.
    post_errors: bool = False
    #: Every POST is accepted and never answered while the GETs polls read stay fine: an
    #: inference engine wedged behind a healthy ``/health``, so only a client's own bound
    #: (lmtui's first-byte timeout) ends the request.
    post_hang: bool = False
    #: Streams end after a few chunks with a clean end of body (the chunked terminator, no
    #: reset), cut in the middle of an event: no finish reason, no ``data: [DONE]``.
    truncate_stream: bool = False
    #: GB the node really has for models when less than its spec says (another process took
    #: the rest, or the config claims too much): a load that does not fit in it is refused
    #: as out of memory, in the kind's own words. None: the spec's ``memory_gb``.
    memory_gb: float | None = None

    def clear(self) -> None:
        """Switch every fault off (``down`` needs ``SimNode.set_down(False)`` as well)."""
        self.down = self.hang = self.drop_mid_stream = self.malformed_json = False
        self.post_errors = self.post_hang = self.truncate_stream = False
        self.slow_s = self.error_rate = 0.0
        self.memory_gb = None
