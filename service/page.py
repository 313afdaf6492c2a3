"""The page at `/`: plain HTML, CSS and JS from service/static, no build step, nothing from a CDN.

It talks to the same `/v1/models` and `/v1/predict` as any client. The list of accepted
containers shown on the page and offered by its file pickers comes from the service's own
`MEDIA_FORMATS`, so the page cannot promise a format that the decoder refuses.
"""

from __future__ import annotations

from functools import lru_cache
from html import escape
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.media import MEDIA_FORMATS

STATIC = Path(__file__).resolve().parent / "static"

# File name extensions a person knows each accepted FFmpeg demuxer by. Every entry of
# MEDIA_FORMATS needs one (tests/service/test_page.py checks it), and only those are listed.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "wav": ("wav",),
    "w64": ("w64",),
    "flac": ("flac",),
    "mp3": ("mp3",),
    "ogg": ("ogg", "oga", "opus"),
    "aac": ("aac",),
    "aiff": ("aif", "aiff"),
    "mov,mp4,m4a,3gp,3g2,mj2": ("mp4", "m4a", "mov", "3gp"),
    "matroska,webm": ("webm", "mkv", "mka"),
    "flv": ("flv",),
    "mpeg": ("mpg", "mpeg"),
    "mpegts": ("ts",),
    "avi": ("avi",),
    "asf": ("asf", "wmv", "wma"),
}

# Same origin only: scripts, styles and media from this app; recordings play from blob: URLs.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Swagger UI and ReDoc start from an inline script or style, and ReDoc would show a logo from its
# CDN: the browser refuses that request instead of trying a host that a firewalled machine cannot
# reach (or telling it who reads these docs).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; frame-ancestors 'none'"
)
POLICIES = {"/": PAGE_CSP, "/docs": DOCS_CSP, "/redoc": DOCS_CSP}

router = APIRouter(include_in_schema=False)


def accepted_extensions() -> list[str]:
    """Extensions of the accepted containers, in MEDIA_FORMATS order of the table above."""
    return [ext for fmt, exts in EXTENSIONS.items() if fmt in MEDIA_FORMATS for ext in exts]


@lru_cache(maxsize=1)
def render_index() -> str:
    exts = accepted_extensions()
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    html = html.replace("__ACCEPT__", escape(",".join(["audio/*", "video/*", *(f".{e}" for e in exts)])))
    return html.replace("__FORMATS__", escape(", ".join(exts)))


@router.get("/")
async def index() -> HTMLResponse:
    return HTMLResponse(render_index(), headers={"Cache-Control": "no-cache"})


class ContentSecurityPolicy:
    """Adds each path's policy to its answer; pure ASGI, so uploads elsewhere still stream untouched."""

    def __init__(self, app: ASGIApp, policies: dict[str, str]) -> None:
        self.app = app
        self.policies = {path: policy.encode() for path, policy in policies.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy = self.policies.get(scope["path"]) if scope["type"] == "http" else None
        if policy is None:
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"content-security-policy", policy)]
            await send(message)

        await self.app(scope, receive, send_with_policy)


def install_page(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under `/static`; same-origin policies for it and the API docs."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    app.add_middleware(ContentSecurityPolicy, policies=POLICIES)
