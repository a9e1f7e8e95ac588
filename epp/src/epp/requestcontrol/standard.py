"""The one place the EPP's request-control plugins are chosen and ordered, at start-up.

Admission: saturation shedding (when asked for). After each answer, in this order: in-flight release
(first, so nothing that follows can delay it), ejection evidence, model refresh, usage metering, then
the request counter (last: it counts the exchange as the others left it). ``extra`` plugins, for
what later features add, run after the standard ones of their kind.
"""

from __future__ import annotations

from epp.datastore import Datastore
from epp.requestcontrol.director import Plugins
from epp.requestcontrol.ejection_evidence import EjectionEvidence, OutlierObserver
from epp.requestcontrol.inflight import InFlightRelease
from epp.requestcontrol.model_refresh import ModelRefresh, ModelRefresher
from epp.requestcontrol.plugins import ResponseComplete, ResponseReader
from epp.requestcontrol.request_metrics import RequestMetrics
from epp.requestcontrol.saturation_shedding import SaturationDetector, SaturationShedding
from epp.requestcontrol.usage_metering import UsageMetering
from epp.telemetry import Telemetry


def standard_plugins(
    datastore: Datastore,
    telemetry: Telemetry,
    *,
    saturation: SaturationDetector | None = None,
    shed_on_saturation: bool = False,
    refresher: ModelRefresher | None = None,
    outliers: OutlierObserver | None = None,
    extra: Plugins | None = None,
) -> Plugins:
    extra = extra or Plugins()
    usage = UsageMetering(telemetry)
    complete: list[ResponseComplete] = [InFlightRelease(datastore)]
    if outliers is not None:
        complete.append(EjectionEvidence(outliers))
    if refresher is not None:
        complete.append(ModelRefresh(refresher))
    complete.append(usage)
    complete.extend(extra.complete)
    complete.append(RequestMetrics(telemetry, datastore))
    readers: list[ResponseReader] = [usage, *extra.readers]
    admitters = (SaturationShedding(saturation),) if shed_on_saturation and saturation is not None else ()
    return Plugins(
        admitters=(*admitters, *extra.admitters),
        pre_request=extra.pre_request,
        readers=tuple(readers),
        complete=tuple(complete),
    )
