"""Inference: the shared settings, sliding windows and scores → labels, and on your own images: inputs (files,
folders, URLs, phrases), the shared predictor, outputs."""

from .._exports import lazy_exports

_WHERE = {
    "InferenceSettings": "settings",
    "PRESETS": "settings",
    "DEFAULT_SETTINGS": "settings",
    "InputError": "inputs",
    "TooLargeError": "inputs",
    "DEFAULT_MAX_PIXELS": "inputs",
    "DEFAULT_MAX_BYTES": "inputs",
    "ImageSource": "inputs",
    "parse_phrases": "inputs",
    "decode_image": "inputs",
    "decode_base64_image": "inputs",
    "fetch_url": "inputs",
    "resolve_sources": "inputs",
    "PredictOptions": "predictor",
    "Predictor": "predictor",
    "load_inference_model": "predictor",
    "overlay_image": "predictor",
    "label_image": "predictor",
    "write_outputs": "predictor",
    "RecordedSettings": "recorded",
    "recorded_for_checkpoint": "recorded",
    "settings_record": "recorded",
    "settings_from_record": "recorded",
    "describe_settings": "recorded",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
