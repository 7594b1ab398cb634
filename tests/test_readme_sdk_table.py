"""README's "EngageLab SDK method → relance" table lists every public method of the installed
engagelab-apppush, each marked; and every one marked not supported answers 21501 at the path
the table gives."""

import inspect
import re
from pathlib import Path

import engagelab
from engagelab import GroupPushClient

from api.routes.unsupported import NOT_SUPPORTED_ROUTES

README = Path(__file__).parent.parent / "README.md"
ROW = re.compile(r"^\| `(?P<method>[\w.]+)` \| `(?P<route>[A-Z]+ [^`]+)` \| (?P<mark>[^|]+) \|$")


def sdk_methods() -> set[str]:
    client = engagelab.Client("key", "secret")
    services = {n: s for n, s in vars(client).items() if not n.startswith("_")}
    names = {
        f"client.{name}.{method}"
        for name, service in services.items()
        for method, _ in inspect.getmembers(type(service), inspect.isfunction)
        if not method.startswith("_")
    }
    names |= {
        f"GroupPushClient.{m}"
        for m, _ in inspect.getmembers(GroupPushClient, inspect.isfunction)
        if not m.startswith("_")
    }
    return names


def table() -> dict[str, tuple[str, str]]:
    text = README.read_text()
    start = text.index("### EngageLab SDK method → relance")
    end = text.index("\n#", start + 1)
    rows = [ROW.match(line) for line in text[start:end].splitlines() if line.startswith("| `")]
    assert all(rows), "a row of the table does not read | `method` | `METHOD /path` | mark |"
    return {m["method"]: (m["route"], m["mark"].strip()) for m in rows if m}


def test_the_readme_table_lists_every_sdk_method() -> None:
    methods = sdk_methods()
    assert len(methods) == 42  # engagelab-apppush 0.1.1
    listed = table()
    assert sorted(methods - set(listed)) == [], "missing from README"
    assert sorted(set(listed) - methods) == [], "not an SDK method"
    marks = {mark.split(":")[0] for _, mark in listed.values()}
    assert marks <= {"supported", "not supported", "see the devices section"}


def test_not_supported_rows_are_the_routes_that_say_so() -> None:
    answered = {f"{method} {path}" for method, path, _, _ in NOT_SUPPORTED_ROUTES}
    for method, (route, mark) in table().items():
        assert (route in answered) == mark.startswith("not supported"), (method, route, mark)
