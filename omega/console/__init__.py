"""The web console: one page per noun (the cell, jobs, a job, a machine, events), in the
CLI's words, served at `/ui` by every replica of a cell that `omega up` starts.

It is a replica extension (`mount`, named in the replica's config document by
`omega up` and `omega store --console`, as the cell's own endpoints are), so the
page and the API share an origin and the console needs no second API: its
script reads the same read models as the CLI (`/v1/jobs`, `/v1/explain`, ...),
writes through the same endpoints (submit, kill, machine state), and follows the
same watch feed (`/v1/watch`, streamed with `fetch`), re-reading what the open
page shows whenever the feed moves, so pages change without reloading.

Only the assets are public (they hold nothing secret); the page signs in with the
cell's token, kept in the tab's session storage, and sends it as the bearer token
on every call. The assets ship in the package (`static/`), and load nothing from
elsewhere.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from cellstore.http import Handler, Request, Response, Router

EXTENSION: dict[str, Any] = {"use": "omega.console:mount"}
ASSETS = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
}


def with_console(fields: dict[str, Any]) -> dict[str, Any]:
    """Replica config fields (`cellstore.cell.replica_fields`) with the console mounted."""
    return {**fields, "extensions": [*fields.get("extensions", ()), EXTENSION]}


def mount(router: Router, replica: object) -> None:
    """Serve the console's assets at `/ui` on `router` (a replica extension)."""
    static = files("omega.console").joinpath("static")
    for path, (name, content_type) in ASSETS.items():
        body = static.joinpath(name).read_bytes()
        router.add("GET", path, _asset(body, content_type), public=True)


def _asset(body: bytes, content_type: str) -> Handler:
    headers = [
        (b"content-type", content_type.encode()),
        # A console served by a cell that was upgraded must not run last version's script.
        (b"cache-control", b"no-cache"),
        (b"x-content-type-options", b"nosniff"),
    ]

    async def serve(request: Request) -> Response:
        return Response(200, body, list(headers))

    return serve
