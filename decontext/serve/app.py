"""The HTTP API (ASGI, FastAPI): ``POST /v1/protect``, ``/healthz``, ``/readyz``, ``/metrics``, and the OpenAPI
page at ``/docs``.

A protect request goes: key check -> room in the queue (503 + Retry-After when full, before the upload is
read) -> the body, counted against the byte limit -> its type -> the settings -> decoding (pixel limit from
the header first) in a thread -> the batching queue -> ``Engine.run`` in the worker thread -> encoding in a
thread -> the image, its record in ``X-Decontext-*`` headers or, on request, JSON. Logs carry the request id,
sizes, status and time; never pixels, file names or bodies."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from .. import __version__
from .batching import Batcher, DeadlineExceeded, QueueFull, ShuttingDown
from .metrics import Metrics
from .settings import ServeSettings
from .uploads import (
    UploadProblem,
    check_declared_length,
    check_image_type,
    decode,
    encode,
    media_type,
    multipart_parts,
    read_limited,
)

log = logging.getLogger("decontext.serve")
FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
LOSSY_WARNING = (
    "lossy re-encoding ({fmt}) weakens the protection and breaks the exact eps budget; ask for png and let "
    "the platform re-encode only what it must"
)
OPEN_PATHS = ("/healthz", "/readyz")  # answered without the key: they say nothing about any photo


class ApiKeyGuard:
    """ASGI middleware: every path but the probes needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-api-key", b"")
        authorization = headers.get(b"authorization", b"")
        if not given and authorization[:7].lower() == b"bearer ":
            given = authorization[7:].strip()
        if not hmac.compare_digest(given, self.key):
            response = JSONResponse(
                {"error": "missing or wrong API key (Authorization: Bearer KEY, or X-API-Key: KEY)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class Service:
    """The app's state: settings, engine, queue, metrics."""

    def __init__(self, settings: ServeSettings, engine=None):
        settings.check()
        self.settings = settings
        self.engine = engine
        self.load_error: str | None = None
        self.loaded = False  # load() finished: the limits are set and the engine is loaded
        self.batcher: Batcher | None = None
        self.in_flight = 0
        self.preparing = 0  # requests past the queue's room check, not yet queued (reading, decoding)
        self.metrics = Metrics(
            queue_depth=lambda: self.batcher.depth if self.batcher else 0, in_flight=lambda: self.in_flight
        )

    def build_engine(self):
        from .engine import Engine

        s = self.settings
        return Engine(
            s.protectors,
            s.model,
            s.family,
            s.device,
            s.dtype,
            s.max_eps,
            s.measure_draws,
            s.allow_pgd,
            s.pgd_steps,
            batch_compute=s.batch_compute,
        )

    def load(self) -> None:
        """Load the editor and the protectors (on the worker thread; a failure is kept for /readyz to show)."""
        try:
            from ..images import set_pixel_limit

            set_pixel_limit(self.settings.max_megapixels)
            if self.settings.threads:
                import torch

                torch.set_num_threads(self.settings.threads)
            engine = self.engine or self.build_engine()
            if not engine.ready:
                engine.load()
            self.engine = engine
            self.loaded = True
            log.info("ready: editor %s, protectors %s", engine.model, ", ".join(engine.protectors))
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("loading failed: %s", self.load_error)

    @property
    def ready(self) -> bool:
        return self.loaded and self.batcher is not None

    def on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batches.observe(size)


def create_app(settings: ServeSettings | None = None, engine=None) -> FastAPI:
    """The ASGI app. ``engine``: an ``Engine`` to use (loaded or not); default: built from ``settings``."""
    service = Service(settings or ServeSettings(), engine)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        s = service.settings
        service.batcher = Batcher(
            lambda jobs: service.engine.run(jobs),
            s.max_batch,
            s.max_wait_ms / 1000,
            s.max_queue,
            service.on_batch,
            upcoming=lambda: service.preparing,
        )
        service.batcher.start()
        # loaded on the worker thread that will run every batch (torch's thread pool belongs to it), in the
        # background: /healthz answers meanwhile and /readyz says when protect requests will be served
        loading = asyncio.ensure_future(service.batcher.call(service.load))
        try:
            yield
        finally:
            # uvicorn comes here after the last in-flight request was answered: the queue is empty by then
            await loading
            await service.batcher.stop()
            log.info("stopped")

    app = FastAPI(
        title="decontext",
        version=__version__,
        summary="Protect photos from diffusion editors at upload time",
        description=(
            "POST a photo to /v1/protect; the answer is the protected photo (PNG by default), its record in "
            "X-Decontext-* headers (or JSON with ?record=json). docs/SERVE.md has the whole story."
        ),
        lifespan=lifespan,
    )
    app.state.service = service

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz():
        """The process answers (liveness)."""
        return "ok\n"

    @app.get("/readyz")
    async def readyz():
        """The editor and the protectors are loaded: protect requests will be served (readiness)."""
        if service.ready:
            return {"ready": True, "protectors": list(service.engine.protectors), "version": __version__}
        body = {"ready": False, "loading": service.load_error is None}
        if service.load_error:
            body["error"] = service.load_error
        return JSONResponse(body, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        """Prometheus text format: requests by status, latency, batch sizes, queue depth, failures by reason."""
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post(
        "/v1/protect",
        response_class=Response,
        responses={
            200: {"content": {t: {} for t in sorted(set(FORMATS.values()))}, "description": "the protected photo"},
            400: {"description": "not an image, truncated, a bad setting"},
            401: {"description": "missing or wrong API key"},
            413: {"description": "over the byte or pixel limit"},
            415: {"description": "not an image content type"},
            503: {"description": "the queue is full (see Retry-After) or the service is loading or stopping"},
            504: {"description": "the request's deadline passed"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "image": {"type": "string", "format": "binary"},
                                "protector": {"type": "string"},
                                "method": {"type": "string"},
                                "eps": {"type": "number"},
                                "format": {"type": "string"},
                                "record": {"type": "string"},
                            },
                            "required": ["image"],
                        }
                    },
                },
            }
        },
    )
    async def protect(
        request: Request,
        protector: str | None = Query(None, description="a protector this server loaded (default: its first)"),
        method: str | None = Query(None, description="protector (default: one forward pass) or fast (PGD)"),
        eps: float | None = Query(None, description="budget in 1/255 units, capped at the server's maximum"),
        format: str | None = Query(None, description="png (default, exact budget), jpeg or webp (lossy)"),
        record: str | None = Query(None, description="json: answer JSON with the image in base64 and the record"),
        quality: int = Query(95, ge=1, le=100, description="JPEG/WebP quality"),
    ):
        """Protect one photo: the raw body with its image content type, or multipart/form-data with the photo in
        a field named ``image`` (settings as query parameters or form fields)."""
        began = time.monotonic()
        request_id = uuid.uuid4().hex[:16]
        service.in_flight += 1
        status, reason, size = 500, "internal", 0
        try:
            response = await _protect(
                request,
                request_id,
                began,
                dict(protector=protector, method=method, eps=eps, format=format, record=record, quality=quality),
            )
            status, reason = response.status_code, ""
            size = int(response.headers.get("content-length", 0))
            return response
        except UploadProblem as exc:
            status, reason = exc.status, exc.reason
            return _error(exc.status, str(exc), request_id, {"Retry-After": "5"} if exc.status == 503 else None)
        except QueueFull as exc:
            status, reason = 503, "queue_full"
            return _error(503, str(exc), request_id, {"Retry-After": str(exc.retry_after)})
        except ShuttingDown as exc:
            status, reason = 503, "shutting_down"
            return _error(503, str(exc), request_id, {"Retry-After": "1", "Connection": "close"})
        except DeadlineExceeded as exc:
            status, reason = 504, "deadline"
            return _error(504, f"{exc} (the server's limit: {service.settings.timeout:g} s)", request_id)
        except Exception as exc:  # the protection itself failed: named, and the service goes on
            status, reason = 500, "protect_failed"
            log.exception("%s protect failed", request_id)
            return _error(500, f"the protection failed ({type(exc).__name__}: {exc})", request_id)
        finally:
            service.in_flight -= 1
            seconds = time.monotonic() - began
            service.metrics.requests.inc(str(status))
            service.metrics.latency.observe(seconds)
            if reason:
                service.metrics.failures.inc(reason)
            log.info(
                "%s status %d %s%d bytes out, %.0f ms",
                request_id,
                status,
                f"{reason} " if reason else "",
                size,
                seconds * 1000,
            )

    async def _protect(request: Request, request_id: str, began: float, query: dict) -> Response:
        s = service.settings
        if not service.ready:
            raise UploadProblem(503, "loading", "the service is still loading (see /readyz)")
        service.batcher.check_room()
        service.preparing += 1
        try:
            job, fmt, quality, options, body = await _prepare(request, request_id, query)
        finally:
            service.preparing -= 1
        protected = await service.batcher.submit(job, began + s.timeout)
        kind = "jpeg" if fmt == "jpg" else fmt
        data = await asyncio.to_thread(encode, protected.rgb8, protected.alpha, kind, quality)
        service.metrics.images.inc()
        record = {**protected.record, "request_id": request_id, "format": kind}
        headers = {"X-Decontext-Request-Id": request_id}
        if kind != "png":
            headers["X-Decontext-Warning"] = LOSSY_WARNING.format(fmt=kind)
            record["warning"] = headers["X-Decontext-Warning"]
        if s.keep:
            await asyncio.to_thread(_keep, Path(s.keep), request_id, body, data, kind, record)
        wants_json = str(options.get("record", "")).lower() == "json" or "application/json" in request.headers.get(
            "accept", ""
        )
        if wants_json:
            return JSONResponse(
                {
                    "request_id": request_id,
                    "media_type": FORMATS[kind],
                    "image_base64": base64.b64encode(data).decode("ascii"),
                    "record": record,
                },
                headers=headers,
            )
        headers.update(record_headers(record))
        return Response(data, media_type=FORMATS[kind], headers=headers)

    async def _prepare(request: Request, request_id: str, query: dict):
        """The upload read, checked and decoded, and its settings: (job, format, quality, options, photo bytes)."""
        s = service.settings
        check_declared_length(request.headers.get("content-length"), s.max_upload_bytes)
        body = await read_limited(request.stream(), s.max_upload_bytes)
        content_type = request.headers.get("content-type", "")
        options = {k: v for k, v in query.items() if v is not None}
        if media_type(content_type) == "multipart/form-data":
            fields, photo = multipart_parts(content_type, body)
            if photo is None:
                raise UploadProblem(400, "no_image", "the multipart body has no field named image (or file)")
            part_type, body = photo
            if part_type:
                check_image_type(part_type)
            for key in ("protector", "method", "eps", "format", "record", "quality"):
                if key in fields and key not in options:
                    options[key] = fields[key]
        else:
            check_image_type(content_type)
        fmt = str(options.get("format", "png")).lower()
        if fmt not in FORMATS:
            raise UploadProblem(400, "bad_setting", f"format {fmt!r}: choose png, jpeg or webp")
        try:
            plan = service.engine.plan(
                options.get("protector"),
                options.get("method"),
                float(options["eps"]) if "eps" in options else None,
            )
            quality = int(options.get("quality", 95))
        except ValueError as exc:
            raise UploadProblem(400, "bad_setting", str(exc)) from None
        image = await asyncio.to_thread(decode, body, request_id)
        log.info("%s upload %d bytes, %dx%d %s", request_id, len(body), image.size[0], image.size[1], image.mode)
        from .engine import Job, content_seed

        job = Job(image, plan, content_seed(body, plan, s.seed), request_id)
        return job, fmt, quality, options, body

    if service.settings.api_key:
        app.add_middleware(ApiKeyGuard, key=service.settings.api_key)
    return app


def record_headers(record: dict) -> dict[str, str]:
    """The record as ``X-Decontext-*`` headers (ASCII; a measure as ``name=value`` pairs)."""

    def measure(values: dict) -> str:
        return ",".join(f"{k}={v:.6g}" for k, v in sorted(values.items())) or "none"

    headers = {
        "X-Decontext-Method": record["method"],
        "X-Decontext-Eps": f"{record['eps']:g}",
        "X-Decontext-Steps": str(record["steps"]),
        "X-Decontext-Measure-Before": measure(record["measure_before"]),
        "X-Decontext-Measure-After": measure(record["measure_after"]),
        "X-Decontext-Max-Diff-Levels": str(record["max_diff_levels"]),
        "X-Decontext-Milliseconds": f"{record['milliseconds']:g}",
        "X-Decontext-Batch": str(record["batch"]),
        "X-Decontext-Seed": str(record["seed"]),
        "X-Decontext-Version": record["version"],
    }
    if record.get("protector"):
        headers["X-Decontext-Protector"] = record["protector"]
        headers["X-Decontext-Protector-Sha256"] = record["protector_sha256"]
    return headers


def _error(status: int, message: str, request_id: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": message, "request_id": request_id},
        status_code=status,
        headers={"X-Decontext-Request-Id": request_id, **(headers or {})},
    )


def _keep(folder: Path, request_id: str, upload: bytes, answer: bytes, kind: str, record: dict) -> None:
    """``--keep DIR``: the upload, the answer and the record, named by the request id (atomically written)."""
    from ..images import atomic_write, write_json_atomic

    atomic_write(folder / f"{request_id}.upload", lambda handle: handle.write(upload))
    atomic_write(folder / f"{request_id}.{kind}", lambda handle: handle.write(answer))
    write_json_atomic(record, folder / f"{request_id}.json")
