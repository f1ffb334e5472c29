"""The online path: a photo comes in over HTTP, the protected photo goes out (``decontext serve``; docs/SERVE.md).

- ``app.create_app(settings)``: the ASGI app (FastAPI): ``POST /v1/protect``, ``/healthz``, ``/readyz``,
  ``/metrics``, ``/docs``.
- ``batching.Batcher``: the bounded queue and dynamic batching in front of one protecting worker.
- ``engine.Engine``: the editor and the protectors, loaded once; a batch goes through ``decontext.protect``.
- ``uploads``: byte, type and pixel limits, decoding and encoding; ``metrics``: the Prometheus text.

Nothing is imported here: ``decontext serve --help`` loads neither torch nor the web framework.
"""
