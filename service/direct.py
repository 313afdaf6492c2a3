"""The hot routes answered straight from the middleware stack, past FastAPI's router.

A request to `POST /v1/predict` went through Starlette's exception middleware, FastAPI's exit-stack middleware, the
router's match over every route, and FastAPI's dependency injection before its handler ran: about a fifth of the
server process's CPU per request under load (docs/decisions/2026-12-07-direct-routes.md). `DirectRoutes` finds the
route by method and path in one dictionary lookup and calls a handler written to need none of that
(`service.routes.answer_predict` makes its own checks, in the order the dependencies made them). What the app
around it does is unchanged: `RequestContext` (request id, metrics, access log, the last-resort 500) and CORS sit
outside it; a `ServiceError` gets the same answer as from the app's exception handler
(`service.errors.service_error_response`); any other exception goes up to `RequestContext`, as it did.

The route stays declared in FastAPI for the OpenAPI schema and for an app built without this middleware; the
request's `scope["route"]` is that declaration, so metrics and `MLA_PUBLIC_ROUTES` see the same route either way
(`endpoint` and `path_params` are set as the router sets them). `app.dependency_overrides` does not reach the
handler: it has no dependencies.
Anything else (another method, a trailing slash, a mounted prefix) goes on to the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ServiceError, service_error_response

Handler = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """Pure ASGI middleware: (method, path) -> (the app's route, its handler); the rest passes through."""

    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], tuple[APIRoute, Handler]]) -> None:
        self.app, self.routes = app, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hit = None
        if scope["type"] == "http" and not scope.get("root_path"):  # behind a prefix, the app's router matches
            hit = self.routes.get((scope["method"], scope["path"]))
        if hit is None:
            await self.app(scope, receive, send)
            return
        route, handler = hit
        # what the router would have put in the scope (Starlette's Route: endpoint, path_params; FastAPI: route)
        scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, {}
        request = Request(scope, receive, send)
        try:
            response = await handler(request)
        except ServiceError as exc:
            response = service_error_response(request, exc)
        await response(scope, receive, send)


def install_direct_routes(app: FastAPI, router: APIRouter, handlers: dict[tuple[str, str], Handler]) -> None:
    """DirectRoutes for `handlers`, each bound to `router`'s declaration of that method and path (which must exist;
    the router is the one included in `app`, whose routes FastAPI puts in `scope["route"]`)."""
    routes: dict[tuple[str, str], tuple[APIRoute, Handler]] = {}
    for (method, path), handler in handlers.items():
        declared = [r for r in router.routes if isinstance(r, APIRoute) and r.path == path and method in (r.methods or ())]
        if len(declared) != 1:
            raise ValueError(f"{method} {path} must be declared once in the router to be served directly, found {len(declared)}")
        routes[(method, path)] = (declared[0], handler)
    app.add_middleware(DirectRoutes, routes=routes)
