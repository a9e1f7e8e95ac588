"""The parameter every picker takes: how many ranked endpoints to return."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from epp.scheduling.params import PositiveInt


class PickerParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # More than one gives the proxy fallbacks, best first.
    max_num_of_endpoints: PositiveInt = Field(1, alias="maxNumOfEndpoints")
