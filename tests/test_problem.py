"""The problem+json format has one home (app/problem.py): a leaf that the lowest layer
can import, producing the same bytes whether written raw or through Starlette."""

from __future__ import annotations

import ast
import json
from http import HTTPStatus

from app.problem import PROBLEM_MEDIA_TYPE, problem_body, problem_bytes, problem_response
from parity.harness.repo import REPO_ROOT


def test_the_problem_module_imports_nothing_from_the_app() -> None:
    tree = ast.parse((REPO_ROOT / "app" / "problem.py").read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert imported
    assert not [name for name in imported if name and name.split(".")[0] == "app"]


def test_raw_bytes_are_the_body_of_the_response() -> None:
    """What app/http_protocol.py writes to the transport is what the middleware sends."""
    fields = {"detail": "überlastet: retry", "slug": "overloaded", "instance": "/x"}
    raw = problem_bytes(HTTPStatus.SERVICE_UNAVAILABLE, **fields)
    response = problem_response(HTTPStatus.SERVICE_UNAVAILABLE, **fields)
    assert raw == response.body
    assert response.media_type == PROBLEM_MEDIA_TYPE == "application/problem+json"


def test_type_title_and_optional_members() -> None:
    assert problem_body(404) == {"type": "about:blank", "title": "Not Found", "status": 404}
    body = problem_body(409, detail="d", slug="conflict", instance="/o", errors=[1])
    assert body == {
        "type": "urn:parity:problem:conflict",
        "title": "Conflict",
        "status": 409,
        "detail": "d",
        "instance": "/o",
        "errors": [1],
    }
    assert json.loads(problem_bytes(409, detail="d")) == problem_body(409, detail="d")
