"""Faults a simulated node can be told to show, switched at run time by tests and the demo.

Every field is off by default. ``slow_s`` is real seconds: it is never multiplied by the
cluster's ``time_scale``, so a test of a client timeout means what it says.
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

    def clear(self) -> None:
        """Switch every fault off (``down`` needs ``SimNode.set_down(False)`` as well)."""
        self.down = self.hang = self.drop_mid_stream = self.malformed_json = False
        self.post_errors = False
        self.slow_s = self.error_rate = 0.0
