"""The APNs provider token: an ES256 JWT signed with the team's .p8 key, reused until Apple wants
a new one."""

from collections.abc import Callable

import jwt

from relance.credentials import ApnsCredentials


class UnusableKey(Exception):
    """The credentials' key cannot sign a token: a human must upload the .p8 key."""


class ProviderToken:
    """The ES256 provider JWT (kid; iss, iat), reused: Apple wants a new one every 20-60 min."""

    def __init__(self, credentials: ApnsCredentials, clock: Callable[[], float], lifetime: float):
        if not 20 * 60 <= lifetime < 60 * 60:
            raise ValueError("token_lifetime must be at least 20 and under 60 minutes")
        self._credentials, self._clock, self._lifetime = credentials, clock, lifetime
        self._jwt: str | None = None
        self._issued_at = 0.0

    def current(self) -> str:
        now = self._clock()
        if self._jwt is None or now - self._issued_at >= self._lifetime:
            self._jwt, self._issued_at = self._sign(int(now)), now
        return self._jwt

    def renew(self, rejected: str) -> None:
        """APNs called `rejected` expired: sign a new one, once for all requests that carried it."""
        if rejected == self._jwt:
            self._jwt = None

    def _sign(self, iat: int) -> str:
        c = self._credentials
        try:
            return jwt.encode(
                {"iss": c.team_id, "iat": iat},
                c.private_key.get_secret_value(),
                algorithm="ES256",
                headers={"kid": c.key_id},
            )
        except (ValueError, TypeError, jwt.PyJWTError):
            raise UnusableKey("private_key cannot sign ES256 tokens: upload the .p8 key") from None
