"""The OpenAPI docs give a worked example for every route, and name the auth scheme."""

from pathlib import Path
from typing import Any

from api.main import create_app
from relance import migrate
from relance.settings import Settings


def _has_example(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    return bool(schema.get("examples") or schema.get("example"))


def test_every_route_has_a_worked_example(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate.upgrade(url)
    app = create_app(Settings(database_url=url))
    spec = app.openapi()
    components = spec["components"]["schemas"]
    missing = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            request = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            response = op["responses"]["200"]["content"]["application/json"]
            if not (
                _has_example(request.get("schema", {}), components)
                or _has_example(response["schema"], components)
            ):
                missing.append(f"{method.upper()} {path}")
            assert op.get("summary") and op.get("description", "") is not None
    assert missing == []
    assert "HTTPBasic" in spec["components"]["securitySchemes"]
