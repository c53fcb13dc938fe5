"""Who a service-account token belongs to, asked of the API server (TokenReview).

The review names the audience meshext expects, so a token minted for another
audience (the API server's own, or another service's) is refused even though it is
validly signed. Only service-account users (``system:serviceaccount:<ns>:<name>``)
are accepted. meshext needs RBAC ``create`` on ``tokenreviews`` for this.
"""

from __future__ import annotations

from typing import Final

from meshext.identity.exchange import ServiceAccount, TokenRejected
from meshext.kube.client import KubeClient
from meshext.kube.errors import KubeError

TOKEN_REVIEWS: Final = "/apis/authentication.k8s.io/v1/tokenreviews"
SERVICE_ACCOUNT_PREFIX: Final = "system:serviceaccount:"


class KubeTokenAuthenticator:
    """:class:`meshext.identity.exchange.TokenAuthenticator` by TokenReview."""

    def __init__(self, client: KubeClient, audience: str) -> None:
        self.client = client
        self.audience = audience

    async def authenticate(self, token: str) -> ServiceAccount:
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        try:
            answer = await self.client.request("POST", TOKEN_REVIEWS, body=review)
        except KubeError as exc:
            raise TokenRejected(f"the token review failed: {exc}") from exc
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            raise TokenRejected(
                f"token not authenticated: {status.get('error') or 'no reason given'}"
            )
        if self.audience not in (status.get("audiences") or []):
            raise TokenRejected(f"token is not for audience {self.audience!r}")
        username = str((status.get("user") or {}).get("username", ""))
        if not username.startswith(SERVICE_ACCOUNT_PREFIX):
            raise TokenRejected(f"{username!r} is not a service account")
        namespace, _, name = username[len(SERVICE_ACCOUNT_PREFIX) :].partition(":")
        if not namespace or not name:
            raise TokenRejected(f"{username!r} is not a service account")
        return ServiceAccount(namespace, name)
