"""Envoy ext_proc: the stream driver, and the two handlers it drives.

``stream`` holds :class:`StreamDriver`, the ``ExternalProcessor/Process`` servicer that owns the
transport (modes, buffering, size limits, exactly-once completion), and the :class:`Handler` protocol
it calls with each request's typed :class:`Exchange`. ``decision`` (route, answer now, or pass),
``errors`` (the one place a refusal becomes an answer), ``messages``, ``body``, ``models`` and
``response`` are its pieces; ``server`` serves a handler.

The handlers are imported from their modules, not from this package (which knows only the
transport): ``epp.extproc.picker.EndpointPicker`` hands its decisions to ``epp.requestcontrol``'s
director; ``epp.extproc.bbr.BodyBasedRouter`` is the front door.
"""

from epp.extproc.decision import PASS, Answer, Decision, Pass, Route
from epp.extproc.errors import RequestError, refusal_response
from epp.extproc.server import BoundPorts, ExtProcServer
from epp.extproc.stream import Exchange, Handler, StreamDriver

__all__ = [
    "PASS",
    "Answer",
    "BoundPorts",
    "Decision",
    "Exchange",
    "ExtProcServer",
    "Handler",
    "Pass",
    "RequestError",
    "Route",
    "StreamDriver",
    "refusal_response",
]
