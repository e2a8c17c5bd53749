"""A REST API for one run (FastAPI + uvicorn): the model is loaded once, at start-up.

- `POST /predict`: multipart form, one or more image files in the field `files`; answers
  `{"run_id", "class_names", "predictions": [{"image", "label", "confidence", "probabilities"}]}` — the numbers
  `predict` gives for the same files.
- `GET /health`: `{"status": "ok", "run_id"}`.
- `GET /model`: the model card (`benchmark.use.card.model_card`) as JSON.

Bad requests get a 4xx JSON answer `{"error": ...}`, never a 500: a file that is not an image or is empty
(400), a missing or misnamed field (422), a request over the upload limit (413, checked on Content-Length
before the body is read and again on each file's size).
"""

import threading
from pathlib import Path
from typing import Annotated

import numpy as np

from benchmark.data.images import open_image
from benchmark.errors import UserError
from benchmark.use.card import model_card
from benchmark.use.loaded import DEFAULT_RESULTS, LoadedRun, load_run, require_extra
from benchmark.use.predict import score

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 10.0


def create_app(loaded: LoadedRun, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
    """The FastAPI application serving `loaded` (one model, shared by every request; inference is serialised).

    (No `from __future__ import annotations` in this module: FastAPI reads the endpoint's annotations at runtime.)
    """
    require_extra("serve")
    from fastapi import FastAPI, File, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    limit = int(max_upload_mb * 1024 * 1024)
    card = model_card(loaded)
    lock = threading.Lock()
    app = FastAPI(title=f"benchmark: {loaded.run_id}", description="Research use only — not a medical device.")

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

    @app.post("/predict")
    def predict(files: Annotated[list[UploadFile], File()]):
        names, images = [], []
        for upload in files:
            data = upload.file.read(limit + 1)
            name = upload.filename or f"file {len(names) + 1}"
            if len(data) > limit:
                return error(413, f"{name}: over the upload limit of {limit} bytes")
            if not data:
                return error(400, f"{name}: the file is empty")
            try:
                images.append(loaded.stored(open_image(data, name)))
            except UserError as err:
                return error(400, str(err))
            names.append(name)
        with lock:  # one forward pass at a time: the model is shared
            predictions = score(loaded, names, np.stack(images))
        return {"run_id": loaded.run_id, "class_names": loaded.class_names,
                "predictions": [{"image": p.image, "label": p.label, "confidence": p.confidence,
                                 "probabilities": p.probabilities} for p in predictions]}

    return app


def serve(run: str | Path, results: str | Path = DEFAULT_RESULTS, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> None:
    """Load run `run` once and serve it with uvicorn until interrupted."""
    require_extra("serve")
    import uvicorn

    if max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    app = create_app(load_run(run, results), max_upload_mb)
    uvicorn.run(app, host=host, port=port, log_level="info")
