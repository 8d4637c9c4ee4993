"""The request and answer shapes of the seqrec HTTP API as dataclasses, and their JSON forms."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

# Item and user ids are strings or integers on the wire; the server writes ids that look like
# integers as JSON numbers, so an answer's ids keep whichever form the server sent.
ItemId = Union[str, int]
UserId = Union[str, int]

JsonObject = Dict[str, Any]


@dataclass(frozen=True)
class Interaction:
    """One thing a user did with an item: `timestamp` in the model's time unit, `rating` optional."""

    item_id: ItemId
    timestamp: Optional[int] = None
    rating: Optional[float] = None

    def to_json(self) -> JsonObject:
        out: JsonObject = {"item_id": self.item_id}
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        if self.rating is not None:
            out["rating"] = self.rating
        return out

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "Interaction":
        return cls(value["item_id"], value.get("timestamp"), value.get("rating"))


# What callers may pass for one interaction: the dataclass, a dict in the API's list form, or a
# tuple (item_id,), (item_id, timestamp) or (item_id, timestamp, rating).
InteractionLike = Union[
    Interaction, Mapping[str, Any], Tuple[ItemId], Tuple[ItemId, Optional[int]],
    Tuple[ItemId, Optional[int], Optional[float]],
]
# A history: a sequence of interactions, or the API's object form item_id -> {timestamp, rating}.
InteractionsLike = Union[Sequence[InteractionLike], Mapping[str, Mapping[str, Any]]]


def interaction_json(value: InteractionLike) -> JsonObject:
    """One interaction in the API's list form."""
    if isinstance(value, Interaction):
        return value.to_json()
    if isinstance(value, Mapping):
        if "item_id" not in value:
            raise ValueError(f"an interaction needs an 'item_id': {dict(value)!r}")
        return dict(value)
    if isinstance(value, (tuple, list)) and 1 <= len(value) <= 3:
        return Interaction(*value).to_json()
    raise TypeError(f"an interaction is an Interaction, a dict or an (item_id, timestamp, rating) tuple, "
                    f"not {value!r}")


def interactions_json(values: InteractionsLike) -> Union[List[JsonObject], JsonObject]:
    """A history in the API's form: the list form, or the object form passed through as it is."""
    if isinstance(values, Mapping):
        return {str(item): dict(fields) for item, fields in values.items()}
    if isinstance(values, (str, bytes)):
        raise TypeError("user_interactions is a sequence of interactions, not a string")
    return [interaction_json(v) for v in values]


@dataclass(frozen=True)
class Recommendation:
    """One recommended (or similar) item; `extra` holds any other fields the server sent (e.g. asked with `fields`)."""

    id: ItemId
    score: float
    extra: JsonObject = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "Recommendation":
        extra = {k: v for k, v in value.items() if k not in ("id", "score")}
        return cls(value["id"], float(value.get("score", 0.0)), extra)


# The answer's key that holds the list: /recommend says "recommendations"; the keys after it are
# accepted so that routes answering in the same shape under another name read the same way.
_LIST_KEYS = ("recommendations", "similar_items", "items")


@dataclass(frozen=True)
class Recommendations:
    """An answer of /recommend (or /similar_items): best first, with the server's note in `message`.

    `model` names the model that answered (the `X-Seqrec-Model` header), when the server says.
    `raw` is the whole JSON answer, for fields this client does not know yet.
    """

    items: List[Recommendation]
    message: Optional[str] = None
    model: Optional[str] = None
    raw: JsonObject = field(default_factory=dict, repr=False, compare=False)

    @property
    def ids(self) -> List[ItemId]:
        return [item.id for item in self.items]

    def __iter__(self) -> Iterator[Recommendation]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def from_json(cls, value: Mapping[str, Any], model: Optional[str] = None) -> "Recommendations":
        listed: Sequence[Mapping[str, Any]] = []
        for key in _LIST_KEYS:
            if isinstance(value.get(key), list):
                listed = value[key]
                break
        body_model = value.get("model")
        if model is None and isinstance(body_model, str):
            model = body_model
        message = value.get("message")
        return cls([Recommendation.from_json(item) for item in listed], message if isinstance(message, str) else None,
                   model, dict(value))


@dataclass
class RecommendRequest:
    """One recommendation request, as `Client.recommend` takes it; for `Client.recommend_batch`.

    Exactly one of `user_interactions` (the history inline; an empty list asks for the
    cold-start answer) and `user_id` (the history the server stores). Fields left None are not
    sent, so the server applies its defaults.
    """

    user_interactions: Optional[InteractionsLike] = None
    user_id: Optional[UserId] = None
    k: int = 10
    recommend_seen: bool = False
    candidate_ids: Optional[Sequence[ItemId]] = None
    exclude_ids: Optional[Sequence[ItemId]] = None
    now: Optional[int] = None
    model: Optional[str] = None
    routing_key: Optional[str] = None
    filter: Optional[Mapping[str, Any]] = None
    fields: Optional[Sequence[str]] = None

    def to_json(self) -> JsonObject:
        if (self.user_interactions is None) == (self.user_id is None):
            raise ValueError("give exactly one of user_interactions or user_id")
        out: JsonObject = {}
        if self.user_interactions is not None:
            out["user_interactions"] = interactions_json(self.user_interactions)
        else:
            out["user_id"] = self.user_id
        out["k"] = self.k
        if self.recommend_seen:
            out["recommend_seen"] = True
        optional: Dict[str, Any] = {
            "candidate_ids": None if self.candidate_ids is None else list(self.candidate_ids),
            "exclude_ids": None if self.exclude_ids is None else list(self.exclude_ids),
            "now": self.now, "model": self.model, "routing_key": self.routing_key,
            "filter": None if self.filter is None else dict(self.filter),
            "fields": None if self.fields is None else list(self.fields),
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out
