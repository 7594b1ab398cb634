"""Connecting to Temporal: one place for the address, the namespace, TLS (a self-hosted cluster
with mTLS, or Temporal Cloud with an API key) and the data converter that the API, the worker
and the CLI share."""

from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from relance.settings import Settings


class TemporalSettingsError(ValueError):
    """TEMPORAL_TLS_* or TEMPORAL_API_KEY cannot be used; says which, never their content."""


def _pem(setting: str, value: str) -> bytes:
    """PEM given inline, or the path of a PEM file."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.strip().encode() + b"\n"
    path = Path(value).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TemporalSettingsError(
            f"{setting}: cannot read {path} ({exc.strerror or exc}); give the path of a PEM "
            "file or the PEM text itself"
        ) from None
    if b"-----BEGIN" not in data:
        raise TemporalSettingsError(f"{setting}: {path} is not a PEM file")
    return data


def tls_config(settings: Settings) -> TLSConfig | None:
    """The TLS to use with Temporal, or None for plaintext (one machine, a private network).
    Any TLS setting or an API key turns TLS on; the server is checked against TEMPORAL_TLS_CA,
    else the system's CAs."""
    cert, key = settings.temporal_tls_cert, settings.temporal_tls_key
    if (cert is None) != (key is None):
        raise TemporalSettingsError(
            "TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together (mTLS: the client certificate "
            "and its private key); set both or neither"
        )
    wanted = (
        settings.temporal_tls
        or cert is not None
        or settings.temporal_tls_ca is not None
        or settings.temporal_tls_server_name is not None
        or settings.temporal_api_key is not None
    )
    if not wanted:
        return None
    return TLSConfig(
        server_root_ca_cert=(
            _pem("TEMPORAL_TLS_CA", settings.temporal_tls_ca) if settings.temporal_tls_ca else None
        ),
        domain=settings.temporal_tls_server_name,
        client_cert=_pem("TEMPORAL_TLS_CERT", cert) if cert is not None else None,
        client_private_key=(
            _pem("TEMPORAL_TLS_KEY", key.get_secret_value()) if key is not None else None
        ),
    )


def describe(settings: Settings) -> str:
    """How relance reaches Temporal, for logs: the address and the kind of security only."""
    tls = tls_config(settings)
    how = "plaintext"
    if settings.temporal_api_key is not None:
        how = "TLS, API key"
    elif tls is not None and tls.client_cert is not None:
        how = "mTLS"
    elif tls is not None:
        how = "TLS"
    return f"{settings.temporal_address} (namespace {settings.temporal_namespace}, {how})"


async def connect_temporal(settings: Settings, runtime: Runtime | None = None) -> Client:
    """`runtime`: one with a metrics exporter (the worker's), else the SDK's default."""
    tls = tls_config(settings)
    api_key = settings.temporal_api_key
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=api_key.get_secret_value() if api_key is not None else None,
        tls=tls if tls is not None else False,
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )
