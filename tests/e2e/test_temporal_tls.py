"""Temporal beyond one machine: `relance api` and `relance worker` reach Temporal only through
a TLS endpoint that requires a client certificate (mTLS), configured by TEMPORAL_TLS_CERT,
TEMPORAL_TLS_KEY, TEMPORAL_TLS_CA and TEMPORAL_TLS_SERVER_NAME, and a push's journey runs.

The dev server itself serves only plaintext (`temporal server start-dev` has no TLS flags), so
the TLS endpoint is a TLS-terminating front that requires a client certificate signed by the
client CA (tests/tls_proxy.py), as a load balancer or ingress in front of a self-hosted
cluster does. What this proves is relance's side: it presents its certificate, checks the
server's against the given CA and name, and speaks gRPC over the TLS connection; a client
without the certificate is refused."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from temporalio.testing import WorkflowEnvironment

from relance.settings import Settings
from relance.temporal_client import TemporalSettingsError, connect_temporal, describe, tls_config
from tests.e2e.conftest import Stack, relance_stack
from tests.stack import eventually
from tests.tls_proxy import TlsFront

SERVER_NAME = "temporal.relance.internal"


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.server_ca, self.client_ca = trustme.CA(), trustme.CA()
        client = self.client_ca.issue_cert("relance-worker", common_name="relance-worker")
        self.ca_file = tmp / "temporal-ca.pem"
        self.server_ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file = tmp / "client.pem"
        self.cert_file.write_bytes(b"".join(p.bytes() for p in client.cert_chain_pems))
        self.key_pem = client.private_key_pem.bytes().decode()


@pytest.fixture(scope="module")
def tls_stack(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, TlsFront, Pki]]:
    tmp = tmp_path_factory.mktemp("tls")
    pki = Pki(tmp)
    front = TlsFront(
        dev_server.client.service_client.config.target_host,
        pki.server_ca,
        pki.client_ca,
        SERVER_NAME,
    )
    with front.running():
        env = {
            "TEMPORAL_ADDRESS": front.address,
            "TEMPORAL_TLS_CERT": str(pki.cert_file),  # a path
            "TEMPORAL_TLS_KEY": pki.key_pem,  # the PEM itself, as from a secret store
            "TEMPORAL_TLS_CA": str(pki.ca_file),
            "TEMPORAL_TLS_SERVER_NAME": SERVER_NAME,
        }
        with relance_stack(dev_server.client, tmp, ["--p-click", "0,0"], extra_env=env) as stack:
            yield stack, front, pki


async def test_api_and_worker_run_a_journey_through_mtls(
    tls_stack: tuple[Stack, TlsFront, Pki],
) -> None:
    stack, front, pki = tls_stack
    body = {
        "from": "push",
        "to": {"registration_id": [f"tls-{i}" for i in range(5)]},
        "body": {"platform": "android", "notification": {"android": {"alert": "Over TLS"}}},
        "resend": {
            "trigger": {"condition": "not_clicked", "within": "1s"},
            "stages": [{"after": "1s", "notification": {"alert": "Still over TLS"}}],
        },
    }
    async with stack.api() as api:
        accepted = await api.post("/v4/push", json=body)
        assert accepted.status_code == 200, accepted.text
        msg_id = accepted.json()["msg_id"]

        async def completed() -> dict | None:
            status = (await api.get(f"/v4/push/{msg_id}")).json()
            return status if status["state"] == "completed" else None

        status = await eventually(completed, timeout=60)
    assert [s["sent"] for s in status["funnel"]["stages"]] == [5, 5]
    # Both parts reached Temporal through the front, with the client certificate.
    assert len(front.clients) >= 2 and set(front.clients) == {"relance-worker"}
    # Neither part wrote the private key or the certificate to its log.
    logs = "".join(part.log_path.read_text() for part in stack.parts.values())
    pem_lines = [
        line
        for pem in (pki.key_pem, pki.cert_file.read_text())
        for line in pem.splitlines()
        if line and not line.startswith("-----")
    ]
    assert not [line for line in pem_lines if line in logs]
    assert "mTLS" in (stack.parts["worker"].log_path.read_text())


async def test_without_the_client_certificate_the_connection_is_refused(
    tls_stack: tuple[Stack, TlsFront, Pki],
) -> None:
    _stack, front, pki = tls_stack
    no_cert = Settings(
        temporal_address=front.address,
        temporal_tls_ca=str(pki.ca_file),
        temporal_tls_server_name=SERVER_NAME,
    )
    through = len(front.clients)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(connect_temporal(no_cert), 30)
    assert len(front.clients) == through  # refused in the handshake: no byte went upstream
    # And the server's certificate is checked: another CA's is not trusted.
    other_ca = trustme.CA()
    wrong_ca = pki.ca_file.with_name("other-ca.pem")
    other_ca.cert_pem.write_to_path(str(wrong_ca))
    untrusted = Settings(
        temporal_address=front.address,
        temporal_tls_cert=str(pki.cert_file),
        temporal_tls_key=pki.key_pem,
        temporal_tls_ca=str(wrong_ca),
        temporal_tls_server_name=SERVER_NAME,
    )
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(connect_temporal(untrusted), 30)


async def test_half_an_mtls_pair_or_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TemporalSettingsError, match="TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY"):
        await connect_temporal(Settings(temporal_tls_cert=str(tmp_path / "c.pem")))
    key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ib2R5\n-----END PRIVATE KEY-----"
    with pytest.raises(TemporalSettingsError, match="TEMPORAL_TLS_CERT: cannot read") as found:
        await connect_temporal(
            Settings(temporal_tls_cert=str(tmp_path / "missing.pem"), temporal_tls_key=key)
        )
    assert "c2VjcmV0" not in str(found.value)


def test_an_api_key_implies_tls_and_is_never_described() -> None:
    """Temporal Cloud: TEMPORAL_API_KEY alone turns TLS on (the system's CAs), and what the
    logs say about the connection never holds the key."""
    settings = Settings(
        temporal_address="relance.a1b2c.tmprl.cloud:7233",
        temporal_namespace="relance.a1b2c",
        temporal_api_key="cloud-api-key-do-not-log",
    )
    tls = tls_config(settings)
    assert tls is not None and tls.client_cert is None and tls.server_root_ca_cert is None
    said = describe(settings)
    assert "TLS, API key" in said and "do-not-log" not in said
    assert tls_config(Settings()) is None  # one machine: plaintext, as before


def test_the_compose_files_stay_valid_and_pass_the_settings_through() -> None:
    """docker-compose.yml hands the TLS and API-key settings (blank when unset) to the relance
    services, and the mTLS override is a valid Compose file; blanks mean unset, not TLS."""
    from ruamel.yaml import YAML

    from tests.test_deployment import ROOT, check

    override = ROOT / "docker-compose.temporal-tls.yml"
    result = check(override)
    assert result.returncode == 0, result.stdout + result.stderr
    compose = YAML(typ="safe").load(ROOT / "docker-compose.yml")
    for name in ("api", "worker", "relance-migrate"):
        env = compose["services"][name]["environment"]
        for setting in (
            "TEMPORAL_TLS_CERT",
            "TEMPORAL_TLS_KEY",
            "TEMPORAL_TLS_CA",
            "TEMPORAL_API_KEY",
        ):
            assert env[setting] == "${" + setting + ":-}"
        assert env["RELANCE_SECRET_KEYS"] == "${RELANCE_SECRET_KEYS:-}"
    blank = Settings(
        temporal_tls_cert="", temporal_tls_key="", temporal_tls_ca="", temporal_api_key=""
    )
    assert tls_config(blank) is None
