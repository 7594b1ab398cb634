"""The dashboard's sign-in: a session cookie signed with HMAC-SHA256, and CSRF tokens.

The cookie holds the app key, a fingerprint of the app's stored secret hash (so changing the
secret ends its sessions), a random nonce and an expiry, signed with the server key. It is
HttpOnly and SameSite=Lax; every button is a POST form carrying a CSRF token derived from the
session's nonce, so another site can neither read it nor forge it.

The server key is derived from `RELANCE_SECRET_KEYS` when set (every API replica then accepts
the others' sessions, and sessions outlive a restart); without it each API process makes a
random key at start, and its sessions end when it restarts."""

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relance.settings import Settings

COOKIE = "relance_dashboard"
LIFETIME_SECONDS = 12 * 3600


def server_key(settings: Settings) -> bytes:
    """32 bytes for signing sessions: from the sealing keys when set, else random."""
    keys = settings.secret_keys.get_secret_value()
    if not keys:
        return secrets.token_bytes(32)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"relance dashboard session")
    return hkdf.derive(keys.encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    app_key: str
    fingerprint: str
    nonce: str
    expires: int


class Signer:
    def __init__(self, key: bytes) -> None:
        self.key = key

    def _mac(self, purpose: str, data: bytes) -> bytes:
        return hmac.new(self.key, purpose.encode() + b"\0" + data, hashlib.sha256).digest()

    def fingerprint(self, secret_hash: str) -> str:
        """Names the app's current secret without revealing anything about it."""
        return _b64(self._mac("app-secret", secret_hash.encode())[:12])

    def issue(self, app_key: str, secret_hash: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        payload = {
            "a": app_key,
            "f": self.fingerprint(secret_hash),
            "n": secrets.token_urlsafe(16),
            "e": int(now + LIFETIME_SECONDS),
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac('session', body.encode()))}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie that this server signed and that has not expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        try:
            given = _unb64(mac)
        except ValueError:
            return None
        if not hmac.compare_digest(given, self._mac("session", body.encode())):
            return None
        try:
            payload = json.loads(_unb64(body))
            found = Session(
                str(payload["a"]), str(payload["f"]), str(payload["n"]), int(payload["e"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        if found.expires <= (time.time() if now is None else now):
            return None
        return found

    def csrf(self, session: Session) -> str:
        return _b64(self._mac("csrf", session.nonce.encode()))

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf(session))
