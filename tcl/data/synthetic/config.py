"""The ``synthetic`` section of ``params.yaml``: every parameter the built-in synthetic world depends on.

Torch- and mmseg-free, so :mod:`tcl.config` validates it without loading the generator; the
parameters check themselves in ``__post_init__`` (:func:`tcl.errors.require`), also when built in
code (``stages/synthetic.py`` builds them from its command line).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ...errors import require

__all__ = ["SyntheticParams"]


@dataclass(frozen=True)
class SyntheticParams:
    """Everything the output depends on; stored in the manifest to make reruns no-ops."""

    seed: int = 0
    pairs: int = 20000
    image_size: int = 96
    eval_image_size: int = 128
    val_images: int = 200
    train_images: int = 100
    max_objects: int = 3
    min_object_frac: float = 1 / 16
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        # Types too: a section built in code (stages/synthetic.py) has not been through the YAML loader.
        for f in fields(self):
            value, number = getattr(self, f.name), f.name == "min_object_frac"
            require(not isinstance(value, bool) and isinstance(value, (int, float) if number else int), f.name,
                    f"must be {'a number' if number else 'an integer'}", value)
        require(0 <= self.seed < 2**63, "seed", "must be >= 0", self.seed)
        require(self.pairs >= 1, "pairs", "must be >= 1", self.pairs)
        require(32 <= self.image_size <= 1024, "image_size", "must be within 32..1024 px", self.image_size)
        require(32 <= self.eval_image_size <= 2048, "eval_image_size", "must be within 32..2048 px",
                self.eval_image_size)
        require(self.val_images >= 1, "val_images", "must be >= 1", self.val_images)
        require(self.train_images >= 0, "train_images", "must be >= 0", self.train_images)
        require(1 <= self.max_objects <= 3, "max_objects", "must be 1, 2 or 3", self.max_objects)
        require(0 < self.min_object_frac <= 0.15, "min_object_frac", "must be within (0, 0.15]", self.min_object_frac)
        require(50 <= self.jpeg_quality <= 100, "jpeg_quality", "must be within 50..100", self.jpeg_quality)
