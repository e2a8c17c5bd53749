"""A REST API for one run (FastAPI + uvicorn): the model is loaded once, at start-up.

- `POST /predict`: multipart form, one or more image files in the field `files`; answers
  `{"run_id", "class_names", "predictions": [{"image", "label", "confidence", "probabilities"}]}` — the numbers
  `predict` gives for the same files.
- `GET /health`: `{"status": "ok", "run_id"}`.
- `GET /model`: the model card (`benchmark.use.card.model_card`) as JSON.
- `GET /docs`, `GET /redoc`: the API's interactive documentation, its scripts and styles served by this server
  (fastapi-offline ships them), so the pages work without internet access.

Requests are decoded and brought to the stored format one by one (the same `open_image` + `LoadedRun.stored`
as `predict`), then scored in micro-batches (`benchmark.use.batching.MicroBatcher`): images of concurrent
requests share a forward pass of up to `max_batch` images, gathered for at most `max_wait_ms`.

Bad requests get a 4xx JSON answer `{"error": ...}`, never a 500: a file that is not an image or is empty
(400), a missing or misnamed field (422), a request over the upload limit (413, checked on Content-Length
before the body is read and again on each file's size). A bad file is refused before its request joins a
batch, so it never fails another request.
"""

import asyncio
import logging
import math
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import numpy as np

from benchmark.data.images import open_image
from benchmark.errors import UserError
from benchmark.use.batching import MicroBatcher
from benchmark.use.card import model_card
from benchmark.use.loaded import DEFAULT_RESULTS, LoadedRun, load_run, require_extra
from benchmark.use.predict import predictions

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 5.0


def check_options(max_upload_mb: float, max_batch: int, max_wait_ms: float) -> None:
    if not 0 < max_upload_mb < math.inf:
        raise UserError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    if max_batch < 1:
        raise UserError(f"--max-batch must be >= 1 (images per forward pass), got {max_batch}")
    if not 0 <= max_wait_ms < math.inf:
        raise UserError(f"--max-wait-ms must be >= 0 (milliseconds), got {max_wait_ms}")


def create_app(loaded: LoadedRun, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_batch: int = DEFAULT_MAX_BATCH,
               max_wait_ms: float = DEFAULT_MAX_WAIT_MS):
    """The FastAPI application serving `loaded` (one model, shared by every request through one micro-batcher,
    `app.state.batcher`, stopped when the server shuts down).

    (No `from __future__ import annotations` in this module: FastAPI reads the endpoint's annotations at runtime.)
    """
    require_extra("serve")
    from fastapi import File, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi_offline import FastAPIOffline
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    check_options(max_upload_mb, max_batch, max_wait_ms)
    limit = int(max_upload_mb * 1024 * 1024)
    card = model_card(loaded)
    batcher = MicroBatcher(loaded.probabilities, max_batch, max_wait_ms)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()
        log.info("scored %d images in %d forward passes", batcher.images_scored, batcher.forward_passes)

    app = FastAPIOffline(title=f"benchmark: {loaded.run_id}", description="Research use only — not a medical device.",
                         lifespan=lifespan)
    app.state.batcher = batcher

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message})

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        fields = sorted({".".join(map(str, e.get("loc", ())[1:])) or "body" for e in exc.errors()})
        return error(422, f"send image files in the multipart form field 'files' (problem with: {', '.join(fields)})")

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def upload_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return error(413, f"request of {length} bytes is over the upload limit of {limit} bytes")
        return await call_next(request)

    @app.get("/health")
    def health():
        return {"status": "ok", "run_id": loaded.run_id}

    @app.get("/model")
    def model():
        return card

    def stored_images(names: list[str], payloads: list[bytes]) -> np.ndarray:
        return np.stack([loaded.stored(open_image(data, name), name) for name, data in zip(names, payloads)])

    @app.post("/predict")
    async def predict(files: Annotated[list[UploadFile], File()]):
        names, payloads = [], []
        for upload in files:
            data = await upload.read(limit + 1)
            name = upload.filename or f"file {len(names) + 1}"
            if len(data) > limit:
                return error(413, f"{name}: over the upload limit of {limit} bytes")
            if not data:
                return error(400, f"{name}: the file is empty")
            names.append(name)
            payloads.append(data)
        try:  # decoding is CPU work: off the event loop
            images = await run_in_threadpool(stored_images, names, payloads)
        except UserError as err:
            return error(400, str(err))
        try:
            probs = await asyncio.wrap_future(batcher.submit(images))
        except Exception as err:  # the model itself failed: a server error, said in JSON
            log.exception("forward pass failed")
            return error(500, f"the model failed on this request's batch ({type(err).__name__}); see the server log")
        return {"run_id": loaded.run_id, "class_names": loaded.class_names,
                "predictions": [{"image": p.image, "label": p.label, "confidence": p.confidence,
                                 "probabilities": p.probabilities} for p in predictions(loaded, names, probs)]}

    return app


def serve(run: str | Path, results: str | Path = DEFAULT_RESULTS, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_batch: int = DEFAULT_MAX_BATCH,
          max_wait_ms: float = DEFAULT_MAX_WAIT_MS, quiet: bool = False) -> None:
    """Load run `run` once and serve it with uvicorn until interrupted (`quiet`: no line per request)."""
    require_extra("serve")
    import uvicorn

    check_options(max_upload_mb, max_batch, max_wait_ms)
    app = create_app(load_run(run, results), max_upload_mb, max_batch, max_wait_ms)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", access_log=not quiet)
