"""What EngageLab offers and relance does not: each route the official SDK calls for it answers
HTTP 404 with code 21501 and a message saying so, instead of a generic "no route" or a fake
success. 404 because relance has no such resource (a 5xx would make clients retry and page
someone); the code, 21501 ("not implemented" in relance's 21000+HTTP-meaning scheme), tells it
apart from an unknown msg_id (21404). No authentication: the answer is the same for anyone."""

from collections.abc import Awaitable, Callable

from fastapi import APIRouter

from api.errors import NOT_SUPPORTED, ApiError

router = APIRouter(tags=["not supported"])

# (method, path, what, why) — the paths and methods of engagelab-apppush 0.1.1.
NOT_SUPPORTED_ROUTES: list[tuple[str, str, str, str]] = [
    (
        "POST",
        "/v4/grouppush",
        "group push",
        "relance has no app groups: push to each app with its own appKey",
    ),
    ("POST", "/v4/voices", "voice files", "relance sends no voice broadcasts"),
    ("GET", "/v4/voices", "voice files", "relance sends no voice broadcasts"),
    ("GET", "/v4/voices/{language}", "voice files", "relance sends no voice broadcasts"),
    ("DELETE", "/v4/voices/{language}", "voice files", "relance sends no voice broadcasts"),
    (
        "POST",
        "/v4/image/oppo",
        "OPPO image upload",
        "relance has no OPPO channel; put image URLs in the notification itself",
    ),
    (
        "GET",
        "/v4/app/vip/status",
        "VIP status",
        "a self-hosted relance has no VIP plans or quotas",
    ),
    ("POST", "/v4/push_plan", "push plans", "relance does not group pushes into plans"),
    ("GET", "/v4/push_plan/list", "push plans", "relance does not group pushes into plans"),
    ("DELETE", "/v4/push_plan/{plan_id}", "push plans", "relance does not group pushes into plans"),
    (
        "DELETE",
        "/v4/push_plan/batch/{plan_ids}",
        "push plans",
        "relance does not group pushes into plans",
    ),
    ("GET", "/v4/status/plan/msg/", "push plans", "relance does not group pushes into plans"),
    ("GET", "/v4/status/plan/msg", "push plans", "relance does not group pushes into plans"),
    (
        "GET",
        "/v4/status/plan/detail",
        "push plan statistics",
        "relance does not group pushes into plans; ask /v4/status/detail per msg_id",
    ),
    (
        "GET",
        "/v4/status/users",
        "user statistics",
        "relance does not record when devices are new, active or online",
    ),
]


def _answer(what: str, why: str) -> Callable[[], Awaitable[None]]:
    async def not_supported() -> None:
        raise ApiError(404, f"{what} is not supported by relance: {why}", code=NOT_SUPPORTED)

    return not_supported


for _method, _path, _what, _why in NOT_SUPPORTED_ROUTES:
    router.add_api_route(_path, _answer(_what, _why), methods=[_method], include_in_schema=False)
