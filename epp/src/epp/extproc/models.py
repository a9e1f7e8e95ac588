"""``/v1/models`` answered by the gateway itself, in OpenAI format.

``GET`` (or ``HEAD``) ``/v1/models`` lists the models; ``/v1/models/{id}`` retrieves one (404 when
it is not listed). The list body is built once per model set (by the datastore's view for the EPP),
and its ImmediateResponse once per body, so every call returns identical bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote

from epp.api_routes import MODEL_PATH_PREFIX as _MODEL_PREFIX
from epp.api_routes import MODELS_PATH, READ_METHODS
from epp.extproc.decision import Answer
from epp.extproc.errors import unknown_model
from epp.extproc.messages import immediate
from epp.model_list import model_body, model_list_body

_READ_METHODS = frozenset(READ_METHODS)


class ModelList:
    """Answers bodyless requests for the model list or one model, from the models given per call."""

    def __init__(self) -> None:
        self._body = model_list_body(())
        self._ids: frozenset[str] = frozenset()
        self._list = Answer(immediate(200, self._body))

    def _refresh(self, served: Sequence[str], body: bytes) -> None:
        if body is not self._body:
            self._body = body
            self._ids = frozenset(served)
            self._list = Answer(immediate(200, body))

    def answer(self, method: str, path: str, served: Sequence[str], body: bytes) -> Answer | None:
        """The answer to a bodyless request for the list or one model; None for any other request.

        ``served`` are the listed models and ``body`` their list (``model_list_body(served)``, kept
        as the same object while the list does not change). Raises the 404 ``RequestError`` for a
        model that is not listed.
        """
        if method not in _READ_METHODS:
            return None
        if path == MODELS_PATH:
            self._refresh(served, body)
            return self._list
        if not path.startswith(_MODEL_PREFIX):
            return None
        self._refresh(served, body)
        # Model ids hold slashes (google/gemma-2b-it), sent as they are or escaped.
        model = unquote(path[len(_MODEL_PREFIX):])
        if model not in self._ids:
            raise unknown_model(model, list(served))
        return Answer(immediate(200, model_body(model)))
