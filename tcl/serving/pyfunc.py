"""The registered MLflow model: a pyfunc that segments images into free-form phrases.

Input: a pandas DataFrame with one row per image, column ``image`` (base64 PNG/JPEG bytes, a
``data:`` URL prefix is accepted) and column ``phrases`` (comma-separated string or list of
strings). Per-request ``params`` (declared in the signature, so ``mlflow models serve`` accepts them):
``bg_thresh``, ``background``, ``pamr``, ``kp_w``, ``short_side``, ``sliding``, ``template`` and
``label_format`` (``array``: 2-D int list; ``png``: base64 greyscale PNG). Output: one dict per row
with ``classes`` (background first when predicted), ``labels`` (the label map, indices into
``classes``), ``fractions``, ``height``, ``width`` and ``seconds``.

Inference settings: the ``options`` the model is logged with (the register stage passes the ones the
pipeline evaluated it with: template, background threshold, window geometry, sliding windows) are
its config and its request parameters' defaults, and are also stored as the artifact
``inference_settings.json`` (:func:`tcl.inference.recorded.settings_record`, with the caller's
``settings_origin``), so a client or a person can read what the served model runs with.

Artifacts: the checkpoint and, where the model needs one, the CLIP weights file. The ``tcl`` package
is stored with the model (``code_paths``), so the logged model serves the code it was logged with.
The pixel limit is part of the model config, not a request parameter: clients cannot raise it.
Bad input raises ``MlflowException`` (HTTP 400 with the one-line message); the server keeps serving.

Unknown request parameters: MLflow (3.x, ``mlflow.models.utils._enforce_params_schema``) drops every
``params`` key that the signature's ``ParamSchema`` does not declare, with only a logged warning,
before ``predict`` is called, and offers no switch to make that an error. So a misspelt option
(``bg_treshold``) would silently fall back to the default. :class:`TCLSegmentationModel` watches for
that warning (a logging filter that records the dropped names for the calling thread, and lets the
warning through) and refuses the request with ``INVALID_PARAMETER_VALUE`` naming them, in
``mlflow.pyfunc.load_model(...).predict`` and in ``mlflow models serve`` alike. This relies on MLflow
logging that warning (its logger ``mlflow.models.utils`` at WARNING, MLflow's default level).
"""

from __future__ import annotations

import ast
import base64
import io
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from ..errors import TCLError
from ..inference import DEFAULT_MAX_BYTES, InputError, PredictOptions, Predictor, decode_base64_image, label_image
from ..inference.settings import DEFAULT_SETTINGS

__all__ = ["TCLSegmentationModel", "save_segmentation_model", "log_segmentation_model", "segmentation_signature",
           "encode_image", "decode_label_map"]

# Request parameters → PredictOptions fields (``background`` = False sets bg_thresh to None).
_REQUEST_PARAMS = ("bg_thresh", "pamr", "kp_w", "short_side", "sliding", "template")
_LABEL_FORMATS = ("array", "png")
# The saved model's config keys (MLmodel ``model_config``) → PredictOptions names: the flat names,
# except the long-side cap, which the config has always called ``max_long_side``.
_CONFIG_KEYS = {"short_side": "short_side", "max_long_side": "long_side", "pamr": "pamr", "kp_w": "kp_w",
                "bg_thresh": "bg_thresh", "template": "template", "sliding": "sliding", "crop": "crop",
                "stride": "stride", "window_batch": "window_batch", "max_pixels": "max_pixels"}


def _model_config(options: PredictOptions) -> dict[str, Any]:
    """``options`` as the saved model's config (keys of :data:`_CONFIG_KEYS`)."""
    values = {"sliding": options.sliding, "window_batch": options.window_batch, "max_pixels": options.max_pixels,
              **{name: getattr(options.settings, name) for name in ("short_side", "long_side", "pamr", "kp_w",
                                                                    "bg_thresh", "template", "crop", "stride")}}
    return {key: values[name] for key, name in _CONFIG_KEYS.items()}


def _options_from_config(config: dict[str, Any]) -> PredictOptions:
    """The inverse of :func:`_model_config`; other keys (device, max_bytes, ...) are not options."""
    return PredictOptions(**{name: config[key] for key, name in _CONFIG_KEYS.items() if key in config})


def encode_image(image) -> str:
    """Base64 PNG of a PIL image, a numpy array, or the bytes of an encoded image file."""
    from PIL import Image

    if isinstance(image, bytes | bytearray):
        return base64.b64encode(image).decode("ascii")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_label_map(value) -> np.ndarray:
    """A returned ``labels`` value (2-D list, or base64 PNG with ``label_format=png``) as an int array."""
    from PIL import Image

    if isinstance(value, str):
        with Image.open(io.BytesIO(base64.b64decode(value))) as image:
            return np.asarray(image).astype(np.int64)
    return np.asarray(value, dtype=np.int64)


def segmentation_signature(options: PredictOptions | None = None):
    """Input columns ``image`` (string) and ``phrases`` (string or list), and the request params
    with ``options`` (default: :class:`PredictOptions`, the shared inference defaults) as their defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    options = options or PredictOptions()
    settings = options.settings
    bg = settings.bg_thresh
    params = [
        ParamSpec("bg_thresh", "double", DEFAULT_SETTINGS.bg_thresh if bg is None else bg),
        ParamSpec("background", "boolean", bg is not None),
        ParamSpec("pamr", "boolean", settings.pamr),
        ParamSpec("kp_w", "double", settings.kp_w),
        ParamSpec("short_side", "long", settings.short_side),
        ParamSpec("sliding", "boolean", options.sliding),
        ParamSpec("template", "string", settings.template),
        ParamSpec("label_format", "string", "array"),
    ]
    inputs = Schema([ColSpec("string", "image"), ColSpec(AnyType(), "phrases")])
    return ModelSignature(inputs=inputs, params=ParamSchema(params))


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class _DroppedParams(logging.Filter):
    """Records, per thread, the request parameters that MLflow's params validation drops (see the
    module docstring), with the parameter set it validated against, so one model's warning is not
    taken for another's. Installed once on MLflow's logger; passes every record on unchanged."""

    _PATTERN = re.compile(r"^Unrecognized params (\[.*?\]) are ignored for inference\. "
                          r"Supported params are: (\{.*?\})\.")

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if match := self._PATTERN.match(record.getMessage()):
            try:
                names, supported = ast.literal_eval(match.group(1)), ast.literal_eval(match.group(2))
                self._local.dropped = (sorted(map(str, names)), frozenset(map(str, supported)))
            except (ValueError, SyntaxError, TypeError):
                self._local.dropped = ([match.group(1)], None)
        return True

    def take(self, accepted: frozenset[str]) -> list[str]:
        """The names dropped for this thread's latest call to a model accepting ``accepted``, forgotten
        once read."""
        names, supported = getattr(self._local, "dropped", ([], None))
        self._local.dropped = ([], None)
        return names if supported in (None, accepted) else []

    @classmethod
    def install(cls) -> _DroppedParams:
        logger = logging.getLogger("mlflow.models.utils")  # where _enforce_params_schema logs
        for existing in logger.filters:
            if type(existing).__name__ == cls.__name__:  # one per process, even if this module is loaded twice
                return existing
        watcher = cls()
        logger.addFilter(watcher)
        return watcher


_ACCEPTED = frozenset(["background", "label_format", *_REQUEST_PARAMS])


class TCLSegmentationModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper around :class:`tcl.inference.Predictor` (see the module docstring)."""

    def load_context(self, context) -> None:
        from ..inference import load_inference_model

        config = dict(context.model_config or {})
        self.max_bytes = int(config.pop("max_bytes", DEFAULT_MAX_BYTES))
        device = config.pop("device", "cpu")
        options = _options_from_config(config)
        clip_weights = context.artifacts.get("clip_weights") or config.get("clip_weights")
        model = load_inference_model(context.artifacts["checkpoint"], clip_weights=clip_weights, device=device)
        self.predictor = Predictor(model, options)
        self._dropped = _DroppedParams.install()

    def _options(self, params: dict[str, Any] | None) -> tuple[PredictOptions, str]:
        params = dict(params or {})
        label_format = params.pop("label_format", "array")
        if label_format not in _LABEL_FORMATS:
            raise InputError(f"label_format must be one of {_LABEL_FORMATS}, got {label_format!r}")
        changes = {k: params[k] for k in _REQUEST_PARAMS if k in params and params[k] is not None}
        if params.get("background") is False:
            changes["bg_thresh"] = None
        if "short_side" in changes:
            changes["short_side"] = int(changes["short_side"])
        return self.predictor.options.replace(**changes), label_format

    # The DataFrame hint keeps MLflow on the explicit signature (no type-hint inference or warning).
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        dropped = self._dropped.take(_ACCEPTED) if hasattr(self, "_dropped") else []
        if dropped:
            raise _invalid(f"unknown request parameter(s) {', '.join(dropped)}; this model accepts: "
                           f"{', '.join(sorted(_ACCEPTED))}")
        try:
            options, label_format = self._options(params)
            frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            missing = [c for c in ("image", "phrases") if c not in frame.columns]
            if missing:
                raise InputError(f"input needs columns 'image' and 'phrases'; missing {missing}")
            outputs = []
            for row, (value, phrases) in enumerate(zip(frame["image"], frame["phrases"], strict=True)):
                if isinstance(value, bytes):
                    value = value.decode("ascii", "replace")
                image = decode_base64_image(value, f"row {row}", self.predictor.options.max_pixels,
                                            self.max_bytes)
                start = time.perf_counter()
                try:
                    result = self.predictor.segment(image, phrases, options)
                except InputError as err:
                    raise InputError(f"row {row}: {err}") from None
                labels = result.labels if label_format == "array" else encode_image(label_image(result))
                outputs.append({"classes": result.names, "labels": labels, "fractions": result.fractions(),
                                "height": image.height, "width": image.width,
                                "seconds": round(time.perf_counter() - start, 4)})
            return outputs
        except TCLError as err:  # bad input or options (InputError, ConfigError): HTTP 400, one line
            raise _invalid(str(err)) from None


def save_segmentation_model(path: str | os.PathLike, checkpoint: str | os.PathLike, *,
                            clip_weights: str | os.PathLike | None = None, options: PredictOptions | None = None,
                            max_bytes: int = DEFAULT_MAX_BYTES, input_example: bool = True,
                            settings_origin: dict[str, Any] | None = None) -> Path:
    """Write the segmentation pyfunc to the new folder ``path`` (an MLflow model: ``MLmodel``, the
    checkpoint and CLIP weights as artifacts, the ``tcl`` code, pinned requirements).

    ``checkpoint``: our training checkpoint or the official ``tcl.pth``. ``clip_weights``: by default
    the file our checkpoint names; required for ``tcl.pth`` ("openai" is not stored: it is downloaded
    when the model loads). ``options``: what the model runs with unless a request says otherwise
    (default: the shared defaults); ``settings_origin``: JSON-able keys added to the
    ``inference_settings.json`` artifact (where the settings came from). The model is loaded once
    first, so a checkpoint that does not fit raises ``CheckpointError`` here rather than when serving.
    """
    import tempfile

    from ..atomic import write_json_atomic
    from ..checkpoint import CheckpointError, read_checkpoint
    from ..inference import load_inference_model
    from ..inference.recorded import settings_record

    checkpoint, options = Path(checkpoint), options or PredictOptions()
    if clip_weights is None:
        try:  # our checkpoint names its CLIP weights; the official tcl.pth does not
            clip_weights = read_checkpoint(checkpoint)["clip"].get("weights")
        except CheckpointError:
            clip_weights = None  # not ours (or unreadable): load_inference_model below says which
    load_inference_model(checkpoint, clip_weights=clip_weights)

    artifacts = {"checkpoint": str(checkpoint)}
    config = {**_model_config(options), "max_bytes": int(max_bytes)}
    if clip_weights is not None and str(clip_weights) != "openai":
        artifacts["clip_weights"] = str(clip_weights)
    elif clip_weights is not None:
        config["clip_weights"] = "openai"
    example = None
    if input_example:
        example = pd.DataFrame({"image": [encode_image(np.full((32, 32, 3), 127, np.uint8))], "phrases": ["cat, dog"]})
    with tempfile.TemporaryDirectory(prefix="tcl-settings-") as tmp:  # save_model copies the artifacts
        record = Path(tmp) / "inference_settings.json"
        write_json_atomic(record, settings_record(options.settings, options.sliding, **(settings_origin or {})))
        artifacts["inference_settings"] = str(record)
        mlflow.pyfunc.save_model(str(path), python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                                 artifacts=artifacts, model_config=config,
                                 signature=segmentation_signature(options), input_example=example,
                                 code_paths=[str(Path(__file__).resolve().parents[1])],  # the tcl package
                                 pip_requirements=_requirements())
    return Path(path)


def log_segmentation_model(checkpoint: str | os.PathLike, *, clip_weights: str | os.PathLike | None = None,
                           options: PredictOptions | None = None, run_id: str | None = None,
                           registered_name: str | None = None, alias: str | None = None,
                           artifact_path: str = "model", tracking_uri: str | None = None,
                           experiment: str = "tcl", max_bytes: int = DEFAULT_MAX_BYTES,
                           settings_origin: dict[str, Any] | None = None) -> dict[str, str | None]:
    """Log the segmentation pyfunc (:func:`save_segmentation_model`) as ``artifact_path`` of run
    ``run_id`` (or of a new run ``segmentation-model`` in ``experiment``), optionally register it as a
    new version of ``registered_name`` and point ``alias`` at it.

    The store is ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the project's embedded SQLite
    store (:func:`tcl.tracking.resolve_tracking_uri`); an explicit client is used, so MLflow's global
    state is left alone. Unlike the training tracker this raises on failure: the caller asked for a
    model. Returns ``{"run_id", "model_uri", "version"}`` (``model_uri``: ``models:/name@alias``,
    ``models:/name/version`` or ``runs:/run/artifact_path``).
    """
    import tempfile

    from ..tracking import register_model, resolve_tracking_uri
    from ..tracking.transport import ensure_experiment, make_client

    uri = resolve_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="tcl-pyfunc-") as tmp:
        model_dir = save_segmentation_model(Path(tmp) / artifact_path, checkpoint, clip_weights=clip_weights,
                                            options=options, max_bytes=max_bytes, settings_origin=settings_origin)
        client = make_client(uri)  # only now: a bad checkpoint leaves no store or run behind
        created = run_id is None
        if created:
            run_id = client.create_run(ensure_experiment(client, uri, experiment),
                                       run_name="segmentation-model").info.run_id
        try:
            client.log_artifacts(run_id, str(model_dir), artifact_path)
        except Exception:
            if created:
                client.set_terminated(run_id, "FAILED")
            raise
        if created:
            client.set_terminated(run_id)
    model_uri, version = f"runs:/{run_id}/{artifact_path}", None
    if registered_name:
        version = register_model(run_id, artifact_path, registered_name, alias=alias, tracking_uri=uri, strict=True)
        model_uri = f"models:/{registered_name}@{alias}" if alias else f"models:/{registered_name}/{version}"
    return {"run_id": run_id, "model_uri": model_uri, "version": version}


def _requirements() -> list[str]:
    """Pinned pip requirements of the serving environment (what the model imports)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("mlflow", "torch", "torchvision", "open_clip_torch", "timm", "pillow", "numpy", "pandas",
                    "ftfy", "regex", "pyyaml"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins
