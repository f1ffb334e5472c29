"""``decontext serve --ray``: the same ASGI app (``app.create_app``) as a Ray Serve deployment.

Each replica is one Ray actor that loads its own editor and protectors (before Serve routes anything to it)
and runs its own ``Batcher``: batching, the bounded queue, deadlines, limits, the API key and ``/metrics`` are
per replica, exactly as in the single-process server. Ray Serve's HTTP proxy (on 127.0.0.1 unless ``--host``
says otherwise, with the same API-key rule) spreads requests over the replicas and restarts a replica whose
process dies.

A replica that dies takes the requests it was answering with it. Ray's proxy would answer those with a bare
500; ``RetryableLoss`` (an ASGI middleware inside Ray's proxy, installed through Ray Serve's HTTP proxy
callback) turns a 5xx that no replica wrote (no ``X-Decontext-Request-Id``) into 503 with ``Retry-After: 1``,
the answer a client already retries on. Retrying is always safe: the same bytes and settings get the same
bytes back from any replica (the seed comes from the content)."""

from __future__ import annotations

import logging
import os
import signal
import threading

from ray import serve

from .settings import ServeSettings

APP_NAME = "decontext"
CALLBACK = "decontext.serve.ray_app.proxy_middlewares"
log = logging.getLogger("decontext.serve")


@serve.deployment(name="decontext")
@serve.ingress()
class DecontextReplica:
    """One replica: an engine loaded in the constructor, the service's app built around it."""

    def __init__(self, settings: ServeSettings):
        settings.check()
        from .app import Service

        self.settings = settings
        # loaded here, before the app exists: Serve sends a replica traffic only after its constructor and the
        # app's startup returned, so no request meets a replica that is still loading
        self.engine = Service(settings).build_engine().load()
        self._decontext_app = None

    def __serve_build_asgi_app__(self):
        from .app import create_app

        self._decontext_app = create_app(self.settings, engine=self.engine)
        return self._decontext_app

    def check_health(self):
        """Serve's health check: a replica whose loading failed is replaced."""
        app = self._decontext_app
        service = app.state.service if app is not None else None
        if service is not None and service.load_error:
            raise RuntimeError(f"loading failed: {service.load_error}")


def deployment(settings: ServeSettings, replicas: int = 1, gpus_per_replica: float = 0.0):
    """The bound application: ``replicas`` replicas, each with ``gpus_per_replica`` GPUs and one CPU per torch
    thread (``--threads``, default 1)."""
    settings.check()
    return DecontextReplica.options(
        num_replicas=replicas,
        ray_actor_options={"num_gpus": gpus_per_replica, "num_cpus": settings.threads or 1},
        # the replica's own queue answers 503 when full; Serve must not cap it below that
        max_ongoing_requests=settings.max_queue + settings.max_batch,
        health_check_period_s=2,
        graceful_shutdown_timeout_s=settings.timeout,
    ).bind(settings)


# ---------------------------------------------------------------------------------------------- the proxy
class RetryableLoss:
    """ASGI middleware in Ray's proxy: a request whose replica died before it answered gets 503 + Retry-After.

    Ray's proxy then sends nothing (the HTTP server would answer a bare 500) or a 5xx of its own; both become 503.
    The app's own answers carry ``X-Decontext-Request-Id`` and pass untouched, its 500s included."""

    BODY = b'{"error": "the replica answering this request stopped; send the same request again"}'

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "replaced": False}

        async def retry_later():
            state["started"] = state["replaced"] = True
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.BODY)).encode())]
            await send({"type": "http.response.start", "status": 503, "headers": headers + [(b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": self.BODY})

        async def relay(message):
            if state["replaced"]:
                return  # the rest of the answer that was replaced
            if message["type"] == "http.response.start":
                ours = any(name.lower() == b"x-decontext-request-id" for name, _ in message.get("headers") or [])
                if message["status"] >= 500 and not ours:
                    return await retry_later()
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, receive, relay)
        except Exception:
            if state["started"]:
                raise
            log.warning("a request was lost with its replica; answered 503 (retry)")
            return await retry_later()
        if not state["started"]:
            await retry_later()


def proxy_middlewares():
    """Ray Serve's HTTP proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): the proxy's middlewares."""
    from starlette.middleware import Middleware

    return [Middleware(RetryableLoss)]


# ---------------------------------------------------------------------------------------------- the command
def run(
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    address: str | None = None,
    on_ready=None,
) -> int:
    """Deploy on Ray (a local one when ``address`` is None), serve until SIGTERM or Ctrl+C, then take the
    deployment down (``serve.shutdown`` on a Ray started here, ``serve.delete`` on a cluster) and disconnect."""
    import ray

    # read by the proxy actor when it starts (the local Ray's processes inherit this environment)
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", CALLBACK)
    stop = threading.Event()
    started_here = address is None and not ray.is_initialized()
    previous = {}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        # after ray.init, whose core worker installs its own SIGTERM handler (it aborts the process)
        previous = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        serve.start(http_options={"host": host, "port": port})
        serve.run(
            deployment(settings, replicas, gpus_per_replica),
            name=APP_NAME,
            route_prefix="/",
            blocking=False,
        )
        if on_ready is not None:
            on_ready()
        while not stop.wait(0.5):
            pass
        log.info("stopping: the deployment is taken down")
    finally:
        try:
            if ray.is_initialized():
                if started_here:
                    serve.shutdown()
                else:
                    serve.delete(APP_NAME)
        finally:
            ray.shutdown()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return 0
