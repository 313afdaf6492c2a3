"""The model repository: the versions of one model loaded in this server, which one answers by default, and the swap.

A new version is loaded beside the one serving (its own sessions, batchers and detectors, the decode pool shared),
warmed on every batch size, and made the default in one assignment: a request picks its version and holds it
(ServedModel.acquire) before its first await, so it is answered by the version it started on. The version swapped
out is unloaded once the last request holding it has answered, and its ONNX Runtime sessions go with it. No request
fails because of a swap.

`POST /v2/repository/models/{name}/load` (the Open Inference Protocol's repository extension) swaps on demand;
MLA_MODEL_POLL_SECONDS > 0 makes the server look for a new highest version that often and swap to it (off by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from pathlib import Path
from typing import Any

from common.manifest import version_key
from service.errors import InvalidRequest, NotFound, NotReady
from service.metrics import Metrics
from service.model import ModelLoadError, ServedModel, make_decode_pool, resolve_version_dir
from service.settings import Settings
from service.uploads import Storage

log = logging.getLogger(__name__)


def settle_heap() -> None:
    """Collect what a start, load or unload left, then put every object alive out of the cyclic collector's reach
    (`gc.freeze`): the sessions, routes and modules a server holds for its life.

    Without it every full collection walked all of them with the event loop stopped: 4 in 18 s of load at concurrency
    32, up to 62 ms each (docs/decisions/2026-12-07-direct-routes.md). What becomes garbage later is still freed by
    its reference count; a cycle among frozen objects would not be, so each load and unload unfreezes, collects and
    freezes again (tens of milliseconds, once a swap)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Repository:
    def __init__(self, settings: Settings, metrics: Metrics, storage: Storage | None = None) -> None:
        self.settings, self.metrics, self.storage = settings, metrics, storage
        first = resolve_version_dir(settings.model_dir, settings.model_version)
        # the folder that holds the versions: model_dir, or its parent when model_dir is itself a version
        self.root = first.parent
        self._first = first
        self.decoder = make_decode_pool(settings, metrics)
        self.versions: dict[str, ServedModel] = {}  # loaded and warm, by version
        self.default: ServedModel | None = None  # answers requests that name no version
        self.name = ""
        self.states: dict[str, tuple[str, str]] = {}  # version -> (state, reason), for /v2/repository/index
        self._lock = asyncio.Lock()  # one load or unload at a time
        self._poller: asyncio.Task[None] | None = None
        self._drains: set[asyncio.Task[None]] = set()
        self._retiring: list[ServedModel] = []  # swapped out, waiting for their last request

    # --- start and stop -------------------------------------------------------------------
    def load_first(self) -> ServedModel:
        """The version the server starts on (blocking: run in a thread). Fails fast on a bad repository."""
        model = ServedModel(self.settings, self.metrics, self.storage, version_dir=self._first, decoder=self.decoder)
        model.load()
        assert model.manifest is not None
        self.name = model.manifest.name
        self.default = model
        self.states[model.version] = ("LOADING", "")
        return model

    async def start(self) -> None:
        model = self.default
        assert model is not None
        await self.decoder.start()
        await model.start()
        self._publish(model)
        settle_heap()
        if self.settings.model_poll_seconds > 0:
            self._poller = asyncio.create_task(self._poll(), name="model-poll")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for task in list(self._drains):
            task.cancel()
        everything = [*self.versions.values(), *self._retiring, *([self.default] if self.default else [])]
        for model in {id(m): m for m in everything}.values():
            await model.close()
        await self.decoder.close()

    # --- lookup -----------------------------------------------------------------------------
    def get(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The version a request names (None: the default); 404 for another model or a version not loaded."""
        if name is not None and name != self.name:
            raise NotFound(f"no model named {name!r}; this server serves {self.name!r}")
        if version is None or version == "":
            if self.default is None:
                raise NotReady("the model is still loading; retry shortly")
            return self.default
        model = self.versions.get(version)
        if model is None:
            loaded = ", ".join(sorted(self.versions, key=version_key)) or "none yet"
            raise NotFound(f"version {version!r} of {self.name!r} is not loaded (loaded: {loaded})")
        return model

    def available(self) -> list[str]:
        """The versions on disk: folders of the model's folder that hold a manifest."""
        if not self.root.is_dir():
            return []
        return sorted((p.name for p in self.root.iterdir() if (p / "manifest.json").is_file()), key=version_key)

    def index(self) -> list[dict[str, Any]]:
        """Every version on disk and every one loaded, with its state (the repository extension's index)."""
        names = set(self.available()) | set(self.versions) | set(self.states)
        out = []
        for v in sorted(names, key=version_key):
            state, reason = self.states.get(v, ("UNAVAILABLE", "not loaded"))
            out.append({"name": self.name, "version": v, "state": state, "reason": reason})
        return out

    # --- load, swap, unload ------------------------------------------------------------------
    async def load(self, version: str | None = None) -> ServedModel:
        """Load `version` (default: the highest on disk) beside what serves, warm it, make it the default, and unload the
        version it replaces once that one's last request has answered. Loading the version already serving is a no-op."""
        async with self._lock:
            if version is None:
                on_disk = self.available()
                if not on_disk:
                    raise NotFound(f"no version of {self.name!r} in {self.root}")
                version = on_disk[-1]
            if not version or "/" in version or "\\" in version or version.startswith(".") or "\0" in version:
                raise NotFound(f"no version {version!r} of {self.name!r}: a version is a folder's name")
            current = self.default
            if current is not None and current.version == version and version in self.versions:
                return current
            folder = self.root / version
            if not (folder / "manifest.json").is_file():
                raise NotFound(f"no version {version!r} of {self.name!r} in {self.root}")
            self.states[version] = ("LOADING", "")
            started = time.perf_counter()
            model = ServedModel(self.settings, self.metrics, self.storage, version_dir=folder, decoder=self.decoder)
            try:
                await asyncio.to_thread(model.load)
                assert model.manifest is not None
                if model.manifest.name != self.name:
                    raise ModelLoadError(f"{folder} holds model {model.manifest.name!r}, not {self.name!r}")
                if model.manifest.version != version:
                    raise ModelLoadError(f"{folder}'s manifest says version {model.manifest.version!r}, not {version!r}")
                await model.start()  # every batch size run once: the first request on it pays no warm-up
            except Exception as exc:
                await model.unload()
                self.states[version] = ("UNAVAILABLE", f"load failed: {exc}")
                self.metrics.model_loads.labels("failed").inc()
                log.error("loading %s v%s failed; still serving v%s", self.name, version, current and current.version)
                raise InvalidRequest(f"version {version!r} cannot be served: {exc}") from None
            replaced = [v for v in self.versions.values() if v is not model]
            if current is not None:
                model.set_draining(current.draining)  # an operator's drain holds across a swap
            # the swap: one assignment, no await between the lookups of new requests and their acquire
            self.default = model
            self._publish(model)
            for old in replaced:
                self._retire(old)
            self.metrics.model_loads.labels("loaded").inc()
            settle_heap()
            log.info("now serving %s v%s (loaded and warmed in %.1f s)", self.name, version, time.perf_counter() - started)
            return model

    async def unload(self, version: str) -> None:
        """Unload a version that is not the default (the default is replaced by loading another)."""
        async with self._lock:
            model = self.versions.get(version)
            if model is None:
                raise NotFound(f"version {version!r} of {self.name!r} is not loaded")
            if model is self.default:
                raise InvalidRequest(f"version {version!r} answers by default: load another version to replace it")
            self._retire(model)

    async def drained(self) -> None:
        """Until every retired version has been unloaded (tests, and shutdown)."""
        while self._drains:
            await asyncio.gather(*list(self._drains), return_exceptions=True)

    def _publish(self, model: ServedModel) -> None:
        self.versions[model.version] = model
        self.states[model.version] = ("READY", "")
        self.metrics.version_loaded.labels(model.version).set(1)

    def _retire(self, old: ServedModel) -> None:
        """Take `old` out of the lookup now; unload it when its last request has answered."""
        if self.versions.get(old.version) is old:
            self.versions.pop(old.version)
            self.states[old.version] = ("UNLOADING", f"replaced; {old.inflight} requests to finish")
        self._retiring.append(old)

        async def drain() -> None:
            await old.idle()
            # the same version loaded again meanwhile (a swap back): its state and series are the new copy's
            again = old.version in self.versions
            await old.unload(forget_metrics=not again)
            self._retiring.remove(old)
            if not again:
                self.states[old.version] = ("UNAVAILABLE", "unloaded")
                self.metrics.version_loaded.labels(old.version).set(0)
            settle_heap()  # its sessions' cycles, frozen with them, become collectable
            log.info("unloaded %s v%s (an earlier copy)" if again else "unloaded %s v%s", self.name, old.version)

        task = asyncio.create_task(drain(), name=f"drain-v{old.version}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _poll(self) -> None:
        """MLA_MODEL_POLL_SECONDS: load a new highest version when one appears on disk. A version that failed to load
        (a folder still being copied, say) is tried again once its files change, not on every poll."""
        failed: dict[str, tuple[tuple[str, int, int], ...]] = {}  # version -> its files when it failed
        while True:
            await asyncio.sleep(self.settings.model_poll_seconds)
            on_disk = self.available()
            newest = on_disk[-1] if on_disk else None
            if newest is None or (self.default is not None and self.default.version == newest):
                continue
            files = _files(self.root / newest)
            if failed.get(newest) == files:
                continue
            try:
                await self.load(newest)
                failed.pop(newest, None)
            except Exception as exc:  # logged by load; the poll goes on, the old version serves
                failed[newest] = files
                log.warning("poll: version %s not loaded (tried again when its files change): %s", newest, exc)


def _files(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What a version folder holds, as names, sizes and modification times: a copy still under way changes it."""
    out = []
    for path in sorted(folder.rglob("*")):
        try:
            stat = path.stat()
        except OSError:  # gone between the listing and the stat: the folder is changing
            continue
        out.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(out)
