"""Use a finished run: predict, export (ONNX / TorchScript / int8), explain, serve — one preprocessing path.

Every function takes a run id (or record path) and the results folder, or a `LoadedRun` from `load_run`.
"""

from benchmark.use.loaded import LoadedRun, find_record, load_run
from benchmark.use.predict import Prediction, PredictionReport, predict

__all__ = ["LoadedRun", "Prediction", "PredictionReport", "find_record", "load_run", "predict"]
