"""Envoy ext_proc servers: the Endpoint Picker (``picker``) and the Body-Based Router (``bbr``).

``stream`` drives the ``ExternalProcessor/Process`` stream both share and acts on what their
``decide`` returns (``decision``: route, answer now, or pass); ``messages``, ``errors``, ``body``,
``models`` and ``response`` are the small pieces it is built from; ``server`` serves it.
"""

from epp.extproc.bbr import BodyBasedRouter
from epp.extproc.decision import PASS, Answer, Decision, Pass, Route
from epp.extproc.errors import RequestError
from epp.extproc.picker import EndpointPicker
from epp.extproc.server import BoundPorts, ExtProcServer
from epp.extproc.stream import Exchange, ExtProcServicer

__all__ = [
    "PASS",
    "Answer",
    "BodyBasedRouter",
    "BoundPorts",
    "Decision",
    "EndpointPicker",
    "Exchange",
    "ExtProcServer",
    "ExtProcServicer",
    "Pass",
    "RequestError",
    "Route",
]
