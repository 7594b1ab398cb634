"""The dashboard in a real browser: Debian's chromium driven by Playwright, against the real
API over HTTP (with its worker, simulator and the Temporal dev server) and a real journey.

Sign in with the app's key and secret; find the push in the list; open it and read the funnel
chart's numbers, which equal GET /v4/push/{msg_id}; redeliver the dead letters of a callback
URL that failed until it was fixed and see them delivered; another app's session gets 404 for
this push. Every page is saved as a screenshot in $RELANCE_DASHBOARD_SCREENSHOTS (default: the
test's tmp_path); with $RELANCE_DASHBOARD_DOCS set, the two the README shows are copied there.

Playwright never downloads a browser here: scripts/ensure-chromium.sh (run by `make test`)
installs Debian's chromium, and the test skips with the reason when it is missing."""

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from relance import ledger
from tests.e2e.conftest import Stack, relance_stack
from tests.e2e.receiver import Receiver
from tests.stack import eventually, free_port, serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.async_api", reason="playwright not installed")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (scripts/ensure-chromium.sh installs it as root)",
)

SIMULATOR = ["--seed", "11", "--min-delay-ms", "20", "--max-delay-ms", "150"]
SIMULATOR += ["--p-click", "0.4,0.4", "--p-fail", "0"]
RETRIES = [0.2, 0.2]


@pytest.fixture(scope="module")
def stack(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env = {
        "RELANCE_CALLBACK_RETRY_SCHEDULE_SECONDS": str(RETRIES),
        "RELANCE_CALLBACK_TIMEOUT_SECONDS": "2",
    }
    with relance_stack(
        dev_server.client, tmp_path_factory.mktemp("dash"), SIMULATOR, extra_env=env
    ) as s:
        yield s


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    port = free_port()
    rec = Receiver()
    async with serve(rec.app(), port):  # type: ignore[arg-type]
        yield rec, f"http://127.0.0.1:{port}"


def screenshots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("RELANCE_DASHBOARD_SCREENSHOTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


async def sign_in(page: Any, api_url: str, app_key: str, secret: str, then: str) -> None:
    await page.goto(f"{api_url}{then}")
    assert "/dashboard/login" in page.url  # not signed in: the login form, coming back after
    await page.fill("input[name=app_key]", app_key)
    await page.fill("input[name=master_secret]", secret)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{api_url}{then}")


async def test_dashboard_in_chromium_shows_the_push_its_funnel_and_redelivers_dead_letters(
    stack: Stack, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    rec, base = receiver
    rec.failing["/down"] = -1  # the callback URL fails until it is fixed
    shots = screenshots(tmp_path)
    rids = [f"dash-{i:02d}" for i in range(40)]
    body = {
        "to": {"registration_id": rids},
        "request_id": "spring-sale",
        "body": {"platform": "android", "notification": {"android": {"alert": "Spring sale"}}},
        "callback_url": [f"{base}/down"],
        "resend": {
            "trigger": {"condition": "not_clicked", "within": "2s"},
            "stages": [{"after": "1s", "notification": {"alert": "Last day of the sale"}}],
        },
    }
    schedule = {
        "name": "weekly_digest",
        "enabled": True,
        "trigger": {"single": {"time": f"{date.today() + timedelta(days=200)} 09:00:00"}},
        "push": {k: body[k] for k in ("to", "body")},
    }
    async with stack.api() as api:
        accepted = await api.post("/v4/push", json=body)
        assert accepted.status_code == 200, accepted.text
        msg_id = accepted.json()["msg_id"]
        made = await api.post("/v4/schedules", json=schedule)
        assert made.status_code == 200, made.text

        async def completed() -> bool:
            return (await api.get(f"/v4/push/{msg_id}")).json()["state"] == "completed"

        await eventually(completed, timeout=60)

        def all_dead() -> bool:
            counts = ledger.push_callbacks(stack.engine, stack.app_key, msg_id)
            return counts["dead"] > 0 and counts["dead"] == sum(counts.values())

        await eventually(all_dead, timeout=30)
        status = (await api.get(f"/v4/push/{msg_id}")).json()
    assert [s["stage"] for s in status["funnel"]["stages"]] == [0, 1]
    assert status["funnel"]["clicked"] > 0

    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()

        # Sign in, then the push is in the list with its audience.
        await sign_in(page, stack.api_url, stack.app_key, stack.master_secret, "/dashboard/pushes")
        cookie = next(c for c in await context.cookies() if c["name"] == "relance_dashboard")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        row = page.locator(f"tr[data-msg-id='{msg_id}']")
        assert await row.locator("[data-field=audience]").inner_text() == "40"
        await page.screenshot(path=str(shots / "pushes.png"), full_page=True)
        failed = await page.goto(f"{stack.api_url}/dashboard/pushes?state=failed")
        assert failed is not None and failed.status == 200
        assert await page.locator(f"tr[data-msg-id='{msg_id}']").count() == 0

        # Open it: the funnel chart's numbers are GET /v4/push/{msg_id}'s.
        await page.goto(f"{stack.api_url}/dashboard/pushes")
        await page.click(f"a[href='/dashboard/pushes/{msg_id}']")
        await page.wait_for_url(f"**/dashboard/pushes/{msg_id}")
        drawn: dict[tuple[int, str], int] = {}
        for text in await page.locator("svg.funnel text.value").all():
            stage = int(await text.get_attribute("data-stage") or -1)
            metric = await text.get_attribute("data-metric") or ""
            drawn[(stage, metric)] = int(await text.text_content() or "")
        expected = {
            (s["stage"], m): s[m]
            for s in status["funnel"]["stages"]
            for m in ("targeted", "sent", "delivered", "displayed", "clicked")
        }
        assert drawn == expected
        link = page.get_by_text("Open the journey in the Temporal UI")
        assert await link.get_attribute("href") == status["temporal_ui"]
        assert await page.locator("svg.timeline").count() == 1
        dead_before = int(await page.locator("[data-callbacks=dead]").inner_text())
        assert dead_before > 0
        await page.screenshot(path=str(shots / "push.png"), full_page=True)

        # Without the CSRF token a button's POST is refused.
        forged = await context.request.post(f"{stack.api_url}/dashboard/dead/1/redeliver")
        assert forged.status == 403

        # Fix the URL, redeliver every dead letter, and see them delivered.
        await page.goto(f"{stack.api_url}/dashboard/dead")
        await page.screenshot(path=str(shots / "dead.png"), full_page=True)
        rec.failing["/down"] = 0
        buttons = page.get_by_role("button", name="Redeliver")
        assert await buttons.count() > 0
        while await buttons.count():
            await buttons.first.click()
            await page.wait_for_url("**/dashboard/dead?redelivered=*")
            assert "queued for delivery again" in await page.locator(".ok").inner_text()

        async def delivered() -> bool:
            await page.goto(f"{stack.api_url}/dashboard/pushes/{msg_id}")
            cells = page.locator("[data-callbacks]")
            counts = {
                await c.get_attribute("data-callbacks"): int(await c.inner_text())
                for c in await cells.all()
            }
            return counts["dead"] == 0 and counts["delivered"] == dead_before

        await eventually(delivered, timeout=30)
        delivered_ids = set(rec.event_ids("/down"))
        assert len(delivered_ids) == dead_before

        await page.goto(f"{stack.api_url}/dashboard/providers")
        assert await page.locator("tr[data-platform=android]").count() == 1
        await page.screenshot(path=str(shots / "providers.png"), full_page=True)
        await page.goto(f"{stack.api_url}/dashboard/schedules")
        assert await page.get_by_text("weekly_digest").count() == 1
        await page.screenshot(path=str(shots / "schedules.png"), full_page=True)

        # Another app, signed in in its own browser context, cannot open this push.
        other_key, other_secret = ledger.create_app(stack.engine, "another shop")
        other = await browser.new_context()
        other_page = await other.new_page()
        await sign_in(other_page, stack.api_url, other_key, other_secret, "/dashboard/pushes")
        assert await other_page.locator(f"tr[data-msg-id='{msg_id}']").count() == 0
        opened = await other_page.goto(f"{stack.api_url}/dashboard/pushes/{msg_id}")
        assert opened is not None and opened.status == 404
        await other_page.screenshot(path=str(shots / "other-app-404.png"), full_page=True)

        # A wrong secret does not sign in.
        await other.clear_cookies()
        await other_page.goto(f"{stack.api_url}/dashboard/login")
        await other_page.fill("input[name=app_key]", stack.app_key)
        await other_page.fill("input[name=master_secret]", "wrong")
        await other_page.click("button[type=submit]")
        assert "wrong master secret" in await other_page.locator(".error").inner_text()
        await browser.close()

    for name in ("pushes", "push", "dead", "providers", "schedules"):
        assert (shots / f"{name}.png").stat().st_size > 0
    docs = os.environ.get("RELANCE_DASHBOARD_DOCS")
    if docs:
        for name in ("pushes", "push"):
            shutil.copy(shots / f"{name}.png", Path(docs) / f"dashboard-{name}.png")
