"""The page and the API docs as HTTP sees them: served by the app, nothing from another host."""

from __future__ import annotations

import re

import httpx

from common.media import MEDIA_FORMATS
from service.page import EXTENSIONS, STATIC, accepted_extensions
from tests.servers import Server

# Any absolute URL to another host, in HTML, CSS or JS (a scheme followed by //).
EXTERNAL = re.compile(r"""(?:src|href|url|import|from)\s*[=(]?\s*["']?(?:https?:)?//""", re.IGNORECASE)


def test_every_accepted_container_is_offered_by_the_page() -> None:
    """A format the decoder accepts but the page does not list would be hidden from the file picker."""
    assert set(MEDIA_FORMATS) <= set(EXTENSIONS), f"add extensions for {set(MEDIA_FORMATS) - set(EXTENSIONS)}"
    exts = accepted_extensions()
    assert len(exts) == len(set(exts))
    assert {"wav", "mp4", "webm", "flac", "mkv"} <= set(exts)


def test_static_files_reference_no_other_host() -> None:
    for path in STATIC.iterdir():
        if path.suffix in {".html", ".js", ".css"}:
            text = path.read_text()
            assert not EXTERNAL.search(text), f"{path.name} loads something from another host"


def test_page_is_served_with_its_assets_and_a_same_origin_policy(server: Server) -> None:
    r = httpx.get(f"{server.url}/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    for directive in ("default-src 'self'", "script-src 'self';", "connect-src 'self'"):
        assert directive in csp
    html = r.text
    assert "__ACCEPT__" not in html
    assert "__FORMATS__" not in html
    assert 'accept="audio/*,video/*,.wav,' in html
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert {"/static/app.js", "/static/style.css"} <= set(assets)
    for asset in ["/static/render.js", "/static/media.js", *assets]:
        a = httpx.get(f"{server.url}{asset}")
        assert a.status_code == 200, asset
        assert len(a.content) > 100, asset
    assert httpx.get(f"{server.url}/static/app.js").headers["content-type"].startswith("text/javascript")
    missing = httpx.get(f"{server.url}/static/nothing.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_page_is_not_in_the_openapi_schema(server: Server) -> None:
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert "/" not in paths
    assert "/v1/predict" in paths


def test_docs_and_redoc_load_their_assets_from_the_app(server: Server) -> None:
    for route in ("/docs", "/redoc"):
        r = httpx.get(f"{server.url}{route}")
        assert "img-src 'self' data:;" in r.headers["content-security-policy"]  # ReDoc's CDN logo is refused
        html = r.text
        urls = re.findall(r'(?:src|href|spec-url)="([^"]+)"', html) + re.findall(r"url: ?'([^']+)'", html)
        assert urls, route
        for url in urls:
            assert url.startswith("/"), f"{route} loads {url}"
            assert httpx.get(f"{server.url}{url}").status_code == 200, url
