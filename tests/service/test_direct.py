"""The hot route served past FastAPI's router (service.direct), and the client-gone watch (service.routes)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from service.direct import DirectRoutes, install_direct_routes
from service.errors import ClientGone, Overloaded
from service.main import create_app
from service.metrics import Metrics
from service.routes import answer_predict, unless_client_leaves
from service.settings import Settings


def _app() -> tuple[FastAPI, list[str], list[Any]]:
    """A FastAPI app declaring POST /p, with a direct handler for it; which of the two answered goes in `called`."""
    called: list[str] = []
    routes_seen: list[Any] = []
    router = APIRouter()

    @router.post("/p")
    async def declared() -> dict[str, str]:
        called.append("framework")
        return {"by": "framework"}

    async def direct(request: Request) -> Response:
        called.append("direct")
        routes_seen.append(request.scope["route"])
        assert request.scope["endpoint"] is declared  # as the router sets it
        assert request.path_params == {}
        if request.query_params.get("fail") == "overloaded":
            raise Overloaded("too busy")
        if request.query_params.get("fail") == "bug":
            raise RuntimeError("a bug")
        return JSONResponse({"by": "direct", "app": request.app is app})

    app = FastAPI()
    app.state.metrics = Metrics()
    app.include_router(router)
    install_direct_routes(app, router, {("POST", "/p"): direct})
    return app, called, routes_seen


async def _send(app: FastAPI, method: str, path: str, root_path: str = "") -> httpx.Response:
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path)


def test_the_direct_handler_answers_its_route_with_the_declared_route_in_scope() -> None:
    app, called, routes_seen = _app()
    answer = asyncio.run(_send(app, "POST", "/p"))
    assert answer.status_code == 200
    assert answer.json() == {"by": "direct", "app": True}  # request.app is the app, as under the router
    assert called == ["direct"]  # the declared endpoint never ran
    (route,) = routes_seen
    assert route.path == "/p"
    assert "POST" in route.methods


def test_a_service_error_gets_the_house_answer_and_is_counted() -> None:
    app, _called, _ = _app()
    answer = asyncio.run(_send(app, "POST", "/p?fail=overloaded"))
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.json() == {"error": {"code": "overloaded", "message": "too busy"}}
    assert app.state.metrics.rejected.labels("overloaded")._value.get() == 1


def test_any_other_exception_goes_up_the_stack_as_before() -> None:
    app, _, _ = _app()
    with pytest.raises(RuntimeError, match="a bug"):  # up to RequestContext in the service (the last-resort 500)
        asyncio.run(_send(app, "POST", "/p?fail=bug"))


@pytest.mark.parametrize(("method", "path", "root_path", "status"), [("GET", "/p", "", 405), ("POST", "/p/", "", 307)])
def test_other_methods_and_paths_go_on_to_the_app(method: str, path: str, root_path: str, status: int) -> None:
    app, called, _ = _app()
    answer = asyncio.run(_send(app, method, path, root_path))
    assert answer.status_code == status
    assert "direct" not in called


def test_behind_a_root_path_the_apps_router_matches() -> None:
    app, called, _ = _app()
    answer = asyncio.run(_send(app, "POST", "/api/p", root_path="/api"))
    assert answer.status_code == 200
    assert answer.json() == {"by": "framework"}
    assert called == ["framework"]


def test_a_route_the_router_does_not_declare_cannot_be_served_directly() -> None:
    app, router = FastAPI(), APIRouter()

    async def handler(request: Request) -> Response:
        return Response()

    with pytest.raises(ValueError, match="POST /nowhere must be declared once"):
        install_direct_routes(app, router, {("POST", "/nowhere"): handler})


def test_the_service_serves_predictions_directly(tmp_path: Path) -> None:
    app = create_app(Settings(tmp_dir=tmp_path))
    (direct,) = [m for m in app.user_middleware if m.cls is DirectRoutes]
    routes: dict[tuple[str, str], tuple[Any, Any]] = direct.kwargs["routes"]  # type: ignore[assignment]
    route, handler = routes[("POST", "/v1/predict")]
    assert handler is answer_predict
    assert route.path == "/v1/predict"
    assert "/v1/predict" in app.openapi()["paths"]  # still declared: the schema has it


class _Client:
    """What unless_client_leaves reads of a request: receive(), which says http.disconnect once `gone` is set."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def test_work_that_ends_first_gives_its_result_and_stops_the_watch() -> None:
    async def main() -> tuple[int, int]:
        client = _Client()

        async def work() -> int:
            await asyncio.sleep(0)
            return 7

        result = await unless_client_leaves(client, work())  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the watcher's cancellation lands
        task = asyncio.current_task()
        assert task is not None
        return result, len([t for t in asyncio.all_tasks() if t is not task])

    assert asyncio.run(main()) == (7, 0)


def test_a_client_that_leaves_cancels_the_work_after_its_cleanup_and_gets_client_gone() -> None:
    async def main() -> list[str]:
        client = _Client()
        events: list[str] = []
        started = asyncio.Event()

        async def work() -> int:
            try:
                started.set()
                await asyncio.Event().wait()  # waits for a worker that never comes
                return 1
            finally:
                events.append("cleanup")

        async def leave() -> None:
            await started.wait()
            client.gone.set()

        leaving = asyncio.ensure_future(leave())
        with pytest.raises(ClientGone):
            await unless_client_leaves(client, work())  # type: ignore[arg-type]
        events.append("client gone")
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
        await leaving
        return events

    assert asyncio.run(main()) == ["cleanup", "client gone"]


def test_a_timeout_around_the_work_stays_a_timeout() -> None:
    async def main() -> str:
        client = _Client()  # never leaves
        try:
            async with asyncio.timeout(0.01):
                await unless_client_leaves(client, asyncio.Event().wait())  # type: ignore[arg-type]
        except TimeoutError:
            return "timeout"
        except ClientGone:
            return "client gone"
        return "answered"

    assert asyncio.run(main()) == "timeout"


def test_a_shutdown_that_comes_with_the_client_leaving_stays_a_cancellation() -> None:
    """The server cancels the request (shutdown) in the same step as the client's disconnect reaches the watcher: the
    server's cancellation must go on, not become ClientGone, and the watcher's own must be taken back."""

    async def main() -> tuple[str, int]:
        client = _Client()
        started = asyncio.Event()

        async def work() -> None:
            started.set()
            await asyncio.Event().wait()

        outcome: list[str] = []

        async def request() -> None:
            try:
                await unless_client_leaves(client, work())  # type: ignore[arg-type]
            except ClientGone:
                outcome.append("client gone")
                raise
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        handler = asyncio.ensure_future(request())
        await started.wait()
        client.gone.set()
        await asyncio.sleep(0)  # the watcher wakes and cancels the handler
        handler.cancel()  # the server's cancellation, before the handler runs again
        with contextlib.suppress(asyncio.CancelledError, ClientGone):
            await handler
        return outcome[0], handler.cancelling()

    assert asyncio.run(main()) == ("cancelled", 1)
