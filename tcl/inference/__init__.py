"""Inference on your own images: inputs (files, folders, URLs, phrases), the shared predictor, outputs."""

from .inputs import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageSource,
    InputError,
    TooLargeError,
    decode_base64_image,
    decode_image,
    fetch_url,
    parse_phrases,
    resolve_sources,
)
from .predictor import PredictOptions, Predictor, label_image, load_inference_model, overlay_image, write_outputs

__all__ = [
    "InputError", "TooLargeError", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_BYTES", "ImageSource", "parse_phrases",
    "decode_image", "decode_base64_image", "fetch_url", "resolve_sources", "PredictOptions", "Predictor",
    "load_inference_model", "overlay_image", "label_image", "write_outputs",
]
