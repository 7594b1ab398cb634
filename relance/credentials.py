"""Per-app provider credentials: what an app stores to send through FCM, APNs, Web Push or
EngageLab. Secrets are SecretStr: they never print, and the API never returns them."""

import base64
import binascii
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from py_vapid import Vapid02, VapidException
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class VapidCredentials(BaseModel):
    """An app's VAPID key pair (its public half is the browser's applicationServerKey)."""

    model_config = ConfigDict(hide_input_in_errors=True)  # a rejected key is not echoed back

    # P-256 private key: PEM, or base64url of the 32 raw bytes (`vapid --gen`, web-push tools).
    private_key: SecretStr
    # Who the push service may contact about this sender: "mailto:..." or an https URL.
    subject: str

    @model_validator(mode="after")
    def _check(self) -> "VapidCredentials":
        signer = self.signer()  # raises ValueError naming the field, never showing the key
        try:
            signer.sign({"sub": self.subject, "aud": "https://push.example"})
        except VapidException as exc:
            raise ValueError('subject: expected "mailto:<email>" or "https://<host>"') from exc
        return self

    def signer(self) -> Vapid02:
        text = self.private_key.get_secret_value().strip()
        try:
            if text.startswith("-----BEGIN"):
                key = load_pem_private_key(text.encode(), password=None)
                if not isinstance(key, ec.EllipticCurvePrivateKey):
                    raise ValueError
                return Vapid02(key)
            if len(b64url_decode(text)) != 32:
                raise ValueError
            return Vapid02.from_raw(text.encode())
        except (ValueError, TypeError, binascii.Error):
            raise ValueError(
                "private_key: expected a P-256 private key, as PEM or as base64url of its "
                "32 raw bytes"
            ) from None

    def application_server_key(self) -> str:
        """The public key a web app passes to pushManager.subscribe(), base64url."""
        point = self.signer().public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return b64url_encode(point)


DATA_CENTRES = {
    "singapore": "https://pushapi-sgp.engagelab.com",
    "hong-kong": "https://pushapi-hk.engagelab.com",
    "virginia": "https://pushapi-usva.engagelab.com",
    "frankfurt": "https://pushapi-defra.engagelab.com",
    "japan": "https://pushapi-jpn.engagelab.com",
    "brazil": "https://pushapi-bra.engagelab.com",
}


class EngageLabCredentials(BaseModel):
    app_key: str = Field(min_length=1)
    master_secret: SecretStr
    base_url: str = Field(DATA_CENTRES["singapore"], description="The app's data centre.")
    # iOS pushes go to APNs production unless the app is a development build.
    apns_production: bool = True
    # EngageLab's callback signing (X-CALLBACK-ID), as set in its console: when given, every
    # callback to POST /v4/callbacks/engagelab must carry a valid signature.
    callback_username: str | None = Field(None, max_length=128)
    callback_secret: SecretStr | None = None


class ApnsCredentials(BaseModel):
    """An app's token-based APNs credentials: the signing key from Apple's developer account."""

    team_id: str = Field(pattern=r"^[A-Z0-9]{10}$")
    key_id: str = Field(pattern=r"^[A-Z0-9]{10}$")
    private_key: SecretStr  # the .p8 file: an ES256 (P-256) key in PEM form
    topic: str = Field(pattern=r"^[A-Za-z0-9.-]+$")  # the app's bundle id
    environment: Literal["production", "sandbox"] = "production"

    @field_validator("private_key")
    @classmethod
    def _es256_key(cls, value: SecretStr) -> SecretStr:
        try:
            key = load_pem_private_key(value.get_secret_value().encode(), password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("expected the .p8 file's content: an ES256 (P-256) key in PEM form")
        return value


GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


class FcmCredentials(BaseModel):
    """The fields of a Firebase service-account key file that FCM needs; the rest are ignored."""

    model_config = ConfigDict(extra="ignore")

    project_id: str
    client_email: str
    private_key: SecretStr
    private_key_id: str | None = None
    token_uri: str = GOOGLE_TOKEN_URI
