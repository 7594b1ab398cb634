"""The dashboard's session cookie and CSRF tokens, and the reading of a report's intervals:
a cookie is only good unchanged, unexpired, from the key that signed it and for the app's
current secret; the lift chart finds every estimate with a 95% interval in a report."""

from pydantic import SecretStr

from api.dashboard.charts import intervals_in, lift_chart
from api.dashboard.session import LIFETIME_SECONDS, Signer, server_key
from relance.settings import Settings


def test_a_session_is_read_back_only_as_signed_and_until_it_expires() -> None:
    signer = Signer(b"k" * 32)
    cookie = signer.issue("app-1", "hash-1", now=1000)
    session = signer.read(cookie, now=1001)
    assert session is not None and session.app_key == "app-1"
    assert session.fingerprint == signer.fingerprint("hash-1") != signer.fingerprint("hash-2")
    assert signer.read(cookie, now=1000 + LIFETIME_SECONDS) is None  # expired
    assert Signer(b"x" * 32).read(cookie, now=1001) is None  # another server key
    body, mac = cookie.split(".")
    forged = body.replace(body[5], "A" if body[5] != "A" else "B", 1)
    assert signer.read(f"{forged}.{mac}", now=1001) is None
    for junk in (None, "", "abc", "a.b.c", "%%%.%%%", f"{body}.!!"):
        assert signer.read(junk, now=1001) is None


def test_csrf_tokens_belong_to_one_session() -> None:
    signer = Signer(b"k" * 32)
    one = signer.read(signer.issue("app-1", "h", now=0), now=1)
    two = signer.read(signer.issue("app-1", "h", now=0), now=1)
    assert one is not None and two is not None
    assert signer.check_csrf(one, signer.csrf(one))
    assert not signer.check_csrf(one, signer.csrf(two))
    assert not signer.check_csrf(one, None) and not signer.check_csrf(one, "")


def test_server_key_is_stable_with_secret_keys_and_random_without() -> None:
    keyed = Settings(secret_keys=SecretStr("Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE="))
    assert server_key(keyed) == server_key(keyed) and len(server_key(keyed)) == 32
    bare = Settings(secret_keys=SecretStr(""))
    assert server_key(bare) != server_key(bare)


def test_intervals_are_found_in_a_report_whatever_its_nesting() -> None:
    report = {
        "msg_id": "1",
        "stages": [
            {"stage": 0, "variants": [{"variant": "a", "clicked_rate": 0.2}]},
            {
                "stage": 1,
                "lift": {
                    "click": {"difference": 0.05, "ci95": [0.01, 0.09], "p_value": 0.01},
                    "conversion": {"difference": None, "note": "sample too small"},
                },
            },
        ],
    }
    (found,) = intervals_in(report)
    assert (found.estimate, found.low, found.high) == (0.05, 0.01, 0.09)
    assert "stage 1" in found.label and "click" in found.label
    chart = str(lift_chart([found]))
    assert 'data-estimate="0.05"' in chart and 'class="ci sig"' in chart
    assert intervals_in({"stages": [{"stage": 1, "lift": {"low": 0.1}}]}) == []
