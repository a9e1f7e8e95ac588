"""The one place the EPP's request-control plugins are chosen and ordered, at start-up.

Admission: saturation shedding (when asked for). After each answer, in this order: in-flight release
(first, so nothing that follows can delay it), ejection evidence, model refresh, usage metering, the
answer check (with a rate), the cached-tokens feedback to the prefix index (with a rate), answer
ends (every answer's end the EPP sees; short streams followed there when asked), then the request
metrics (last: they count the exchange as the others left it). ``extra`` plugins, for what later
features add, run after the standard ones of their kind.
"""

from __future__ import annotations

from epp.answer_check import AnswerCheck
from epp.datastore import Datastore
from epp.requestcontrol.answer_checking import AnswerChecking
from epp.requestcontrol.answer_ends import AnswerEnds
from epp.requestcontrol.cached_tokens import CachedTokensFeedback
from epp.requestcontrol.director import Plugins
from epp.requestcontrol.ejection_evidence import EjectionEvidence, OutlierObserver
from epp.requestcontrol.inflight import InFlightRelease
from epp.requestcontrol.model_refresh import ModelRefresh, ModelRefresher
from epp.requestcontrol.plugins import PreRequest, ResponseComplete, ResponseReader
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
    answer_check: AnswerCheck | None = None,
    cached_tokens: CachedTokensFeedback | None = None,
    follow_answers_up_to: int = 0,
    extra: Plugins | None = None,
) -> Plugins:
    extra = extra or Plugins()
    usage = UsageMetering(telemetry)
    complete: list[ResponseComplete] = [InFlightRelease(datastore)]
    pre_request: list[PreRequest] = []
    readers: list[ResponseReader] = [usage]
    if outliers is not None:
        complete.append(EjectionEvidence(outliers))
    if refresher is not None:
        complete.append(ModelRefresh(refresher))
    complete.append(usage)
    if answer_check is not None:
        checking = AnswerChecking(answer_check, datastore)
        pre_request.append(checking)
        readers.append(checking)
        complete.append(checking)
    if cached_tokens is not None:
        pre_request.append(cached_tokens)
        readers.append(cached_tokens)
        complete.append(cached_tokens)
    ends = AnswerEnds(datastore, follow_answers_up_to)
    pre_request.append(ends)
    readers.append(ends)
    complete.append(ends)
    complete.extend(extra.complete)
    complete.append(RequestMetrics(telemetry, datastore))
    admitters = (SaturationShedding(saturation),) if shed_on_saturation and saturation is not None else ()
    return Plugins(
        admitters=(*admitters, *extra.admitters),
        pre_request=(*pre_request, *extra.pre_request),
        readers=(*readers, *extra.readers),
        complete=tuple(complete),
    )
