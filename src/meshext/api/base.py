"""Shared pydantic settings for resource specs: camelCase on the wire, unknown fields refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """A strict part of a resource: a misspelt field is an error, not silently ignored."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel
    )


class LenientModel(BaseModel):
    """A part of a resource owned by another system: fields meshext does not read are kept."""

    model_config = ConfigDict(
        frozen=True, extra="allow", populate_by_name=True, alias_generator=to_camel
    )
