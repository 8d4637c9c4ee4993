"""A Python client for `seqrec serve`, the seqrec HTTP server (standard library only).

    from seqrec_client import Client
    client = Client("http://127.0.0.1:8080", api_key="...")
    client.append("alice", [("1210", 1700000000, 4.5)])
    for item in client.recommend(user_id="alice", k=5):
        print(item.id, item.score)
"""
from .client import DEFAULT_URL, Client
from .errors import (
    ApiError, BadRequest, Forbidden, NotFound, Overloaded, PayloadTooLarge, ProtocolError, RequestTimeout,
    SeqrecError, TransportError, Unauthorized,
)
from .schema import (
    Interaction, InteractionLike, InteractionsLike, ItemId, Recommendation, Recommendations, RecommendRequest,
    UserId,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL", "Client", "ApiError", "BadRequest", "Forbidden", "NotFound", "Overloaded", "PayloadTooLarge",
    "ProtocolError", "RequestTimeout", "SeqrecError", "TransportError", "Unauthorized", "Interaction",
    "InteractionLike", "InteractionsLike", "ItemId", "Recommendation", "Recommendations", "RecommendRequest",
    "UserId",
]
