"""Per-recipient templates: jinja2's sandbox, with an undefined that refuses to print itself.

Kept apart from the content rules so that the API models can check a template's syntax
without importing the renderer (which imports those models)."""

from typing import Any

from jinja2 import ChainableUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment


class _Missing(ChainableUndefined):
    """Chains through `a.b[0]` so `| default(...)` works, but refuses to print itself."""

    def __str__(self) -> str:
        self._fail_with_undefined_error()
        return ""  # pragma: no cover

    __repr__ = ChainableUndefined._fail_with_undefined_error
    __iter__ = ChainableUndefined._fail_with_undefined_error
    __len__ = ChainableUndefined._fail_with_undefined_error


_env = SandboxedEnvironment(undefined=_Missing, autoescape=False)


def check_template(source: str) -> None:
    """Raise ValueError if a template does not parse."""
    try:
        _env.parse(source)
    except TemplateError as exc:
        raise ValueError(f"expected a valid template: {exc}") from None


def render_template(source: str, attributes: dict[str, Any]) -> str | None:
    """The rendered text, or None when an attribute is missing or the template fails."""
    try:
        return _env.from_string(source).render(**attributes)
    except Exception:  # noqa: BLE001 — whatever a template does with odd attributes, never fail a send
        return None
