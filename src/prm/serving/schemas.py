"""The HTTP API's request and response bodies, validated before any model sees them.

What can be checked without the model is checked here (types, finiteness, sizes, duplicate
ids); what depends on the loaded bundle (feature widths, known ids, the longest list) is
checked by :func:`prm.serving.app.request_inputs`. Either way a bad request is a 4xx that
names the field, never a 5xx.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

MAX_ITEMS = 1024  # longest list any model may serve; the bundle's own limit is usually lower
MAX_HISTORY = 1000  # past clicks per request
MAX_WIDTH = 4096  # floats per feature or profile vector
MAX_ABS = 1e6  # larger inputs overflow float32 activations long before they mean anything


def _whole_number(value: object) -> object:
    """5.0 is the integer 5, as JSON Schema has it; strings and bools stay wrong types."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Id = Annotated[int, Field(ge=0, lt=2**31), BeforeValidator(_whole_number)]
Value = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS, le=MAX_ABS)]


class KnownUser(BaseModel):
    """A user of the model's catalog; profile and history come from there."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Id


class NewUser(BaseModel):
    """Any user given by value: new since the export, or with a fresher history."""

    model_config = ConfigDict(extra="forbid", strict=True)

    profile: list[Value] = Field(max_length=MAX_WIDTH, description="dense profile (d_profile)")
    history: list[Id] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description="item ids of the user's past clicks; may be empty",
    )


class Item(BaseModel):
    """A candidate item; its features default to the catalog's."""

    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: Id
    features: list[Value] | None = Field(
        None,
        max_length=MAX_WIDTH,
        description="item features X (d_feature floats); the catalog's when omitted",
    )


class RerankRequest(BaseModel):
    """One user and the candidate items in their initial order (best first)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"user": {"user_id": 0}, "items": [{"item_id": 12}, {"item_id": 7}]},
                {
                    "user": {"profile": [0.5, -1.2, 0.0, 0.3, 1.1, -0.4, 0.2, 0.9], "history": [3]},
                    "items": [{"item_id": 12}, {"item_id": 7}, {"item_id": 42}],
                },
            ]
        },
    )

    user: KnownUser | NewUser
    items: list[Item] = Field(min_length=1, max_length=MAX_ITEMS)

    @field_validator("items")
    @classmethod
    def _unique_item_ids(cls, items: list[Item]) -> list[Item]:
        first: dict[int, int] = {}
        for index, item in enumerate(items):
            if item.item_id in first:
                raise ValueError(
                    f"duplicate item_id {item.item_id} at items[{first[item.item_id]}] and "
                    f"items[{index}]"
                )
            first[item.item_id] = index
        return items


class RankedItem(BaseModel):
    item_id: int
    score: float = Field(description="the re-ranker's score; higher is shown first")
    initial_position: int = Field(description="0-based rank in the request's order")


class RerankResponse(BaseModel):
    """The candidates in their new order, best first."""

    model_version: str
    items: list[RankedItem]


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(
        description="where in the request: ['body', 'items', 3, 'item_id'] is the body's "
        "items[3].item_id; ['header', 'x-api-key'], ['path'], ['method']; [] for the model"
    )
    msg: str = Field(description="what is wrong, and what the service accepts")
    type: str = Field(description="a stable name for the kind of error")


class ErrorResponse(BaseModel):
    """The body of every error answer (4xx and 503): what went wrong and where."""

    detail: list[ErrorDetail]


class Health(BaseModel):
    """Readiness (/readyz, /healthz) and liveness (/livez)."""

    status: Literal["loading", "ready", "failed", "alive"]
    model_version: str | None = None
    backend: str | None = None
    error: str | None = Field(None, description="why loading failed; no file paths")
