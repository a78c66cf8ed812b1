"""The ``clip`` and ``model`` sections of ``params.yaml``: which CLIP TCL is built on, and TCL's hyper-parameters.

Torch-free on purpose (imported by :mod:`tcl.config` to validate a parameter file before anything
heavy loads): a CLIP config dict is checked against open_clip's key names listed here, not by
importing open_clip; ``tests/model/test_config.py`` keeps the lists equal to the installed open_clip's.
Each section checks its own fields in ``__post_init__`` (:func:`tcl.errors.require`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, require

__all__ = ["ClipSettings", "TCLConfig", "TCL_TERMS", "check_clip_config", "CLIP_CONFIG_REQUIRED", "CLIP_CONFIG_KEYS"]

#: TCL's two contrastive terms (``model.tcl_terms``): image-level (the masked image through the frozen CLIP)
#: and region-level (mask-pooled dense features), each against the captions.
TCL_TERMS = ("image", "region")

#: What a CLIP config dict must give (open_clip would silently fill the rest with ViT-B/16-sized
#: defaults: a config missing ``width`` builds a 768-wide tower): the tower sizes TCL depends on.
CLIP_CONFIG_REQUIRED = {
    "": ("embed_dim", "vision_cfg", "text_cfg"),
    "vision_cfg": ("image_size", "patch_size", "width", "head_width", "layers"),
    "text_cfg": ("context_length", "vocab_size", "width", "heads", "layers"),
}

#: Every key open_clip accepts there (its constructors raise a TypeError on any other): ``open_clip.CLIP``'s
#: keyword parameters and the fields of ``CLIPVisionCfg`` / ``CLIPTextCfg`` (open_clip 3.3).
CLIP_CONFIG_KEYS = {
    "": frozenset({"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "init_logit_bias",
                   "nonscalar_logit_scale", "cast_dtype", "output_dict"}),
    "vision_cfg": frozenset({
        "layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "ls_init_value", "patch_dropout",
        "attentional_pool", "attn_pooler_queries", "attn_pooler_heads", "no_ln_pre", "pos_embed_type",
        "final_ln_after_pool", "pool_type", "output_tokens", "act_kwargs", "norm_kwargs", "block_type", "qk_norm",
        "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc", "timm_model_name",
        "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path"}),
    "text_cfg": frozenset({
        "context_length", "vocab_size", "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs", "width", "heads",
        "layers", "mlp_ratio", "ls_init_value", "embed_cls", "pad_id", "eos_id", "no_causal_mask",
        "final_ln_after_pool", "pool_type", "proj_bias", "proj_type", "output_tokens", "act_kwargs", "norm_kwargs",
        "block_type", "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc",
        "hf_model_name", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}),
}


def check_clip_config(cfg: dict) -> dict:
    """Check a CLIP config dict (``clip.model``) before anything is built; returns it.

    Raises ``ConfigError("<key>: <why>")`` with the key relative to the dict (``vision_cfg.width``)
    for a missing required key, a key open_clip does not know (its constructors would raise a
    TypeError) or a size that is not a positive integer or does not divide as the towers need.
    """
    for part, names in CLIP_CONFIG_REQUIRED.items():
        section = cfg if not part else cfg.get(part)
        prefix = f"{part}." if part else ""
        require(isinstance(section, dict), part, f"expected a mapping, got {type(section).__name__} {section!r}")
        for name in section:
            require(name in CLIP_CONFIG_KEYS[part], f"{prefix}{name}",
                    f"not an open_clip {part or 'CLIP'} key (needed: {', '.join(names)})")
        for name in names:
            require(name in section, f"{prefix}{name}",
                    f"missing (a CLIP config dict needs {', '.join(names)}" + (" in " + part if part else "") + ")")
            value = section[name]
            if isinstance(value, dict):
                continue
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"{prefix}{name}",
                    "must be a positive integer", value)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    require(not vision["width"] % vision["head_width"], "vision_cfg.width",
            f"must be a multiple of head_width ({vision['head_width']})", vision["width"])
    require(not vision["image_size"] % vision["patch_size"], "vision_cfg.image_size",
            f"must be a multiple of patch_size ({vision['patch_size']})", vision["image_size"])
    require(not text["width"] % text["heads"], "text_cfg.width", f"must be a multiple of heads ({text['heads']})",
            text["width"])
    if "quick_gelu" in cfg:
        require(isinstance(cfg["quick_gelu"], bool), "quick_gelu", "expected bool", cfg["quick_gelu"])
    return cfg


@dataclass(frozen=True)
class ClipSettings:
    """Which CLIP TCL is built on (``clip:``).

    ``model``: an open_clip config name (``ViT-B-16-quickgelu``, the paper) or a config dict with
    ``embed_dim``, ``vision_cfg``, ``text_cfg`` (a tiny CLIP). ``weights``: ``None`` (to be trained
    by the prepare_clip stage), ``"openai"`` (download) or a weights file.
    """

    model: str | dict = "ViT-B-16-quickgelu"
    weights: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            try:
                check_clip_config(self.model)
            except ConfigError as err:
                raise ConfigError(f"model.{err}") from None
        else:
            require(bool(self.model), "model", "must be set (an open_clip config name or a config dict)")
        require(self.weights != "", "weights", "must be null, 'openai' or a weights file", self.weights)
        # open_clip would build its own ViT-B/16, not this dict, and the checkpoint would record the dict
        require(not (self.weights == "openai" and isinstance(self.model, dict)), "weights",
                "'openai' goes with an open_clip config name (ViT-B-16-quickgelu), not a config dict")


@dataclass(frozen=True)
class TCLConfig:
    """Model hyper-parameters (``model:``; defaults: the released ViT-B/16 model, kakaobrain/tcl bc2b551
    configs/tcl.yml). How ``ie_freeze`` fits a given CLIP's depth is checked where the model is built."""

    ie_freeze: int = 11  # CLIP blocks 1..ie_freeze stay frozen and shared; the rest are copied
    decoder_stages: int = 2  # each stage upsamples ×2: masks at stride 16 / 2**stages
    sim2mask_init_w: float = 10.0
    sim2mask_init_b: float = -2.5
    gumbel_tau: float = 1.0
    tcl_w: float = 0.1  # weight of both image- and region-level TCL losses
    #: Which TCL terms the objective holds; both officially (kakaobrain/tcl models/tcl/tcl.py ``TCL.forward``).
    #: Dropping one is an ablation: docs/training.md measures what each gains without the pairing.
    tcl_terms: tuple[str, ...] = TCL_TERMS
    area_w: float = 0.4
    pos_area_prior: float = 0.4
    neg_area_prior: float = 0.0
    tv_w: float = 1.0
    text_chunk_size: int = 1024  # prompts encoded per text-tower call

    def __post_init__(self) -> None:
        require(self.ie_freeze >= 1, "ie_freeze", "must be >= 1", self.ie_freeze)
        require(self.decoder_stages >= 0, "decoder_stages", "must be >= 0", self.decoder_stages)
        require(self.gumbel_tau > 0, "gumbel_tau", "must be > 0", self.gumbel_tau)
        for name in ("tcl_w", "area_w", "tv_w"):
            require(getattr(self, name) >= 0, name, "must be >= 0", getattr(self, name))
        object.__setattr__(self, "tcl_terms", tuple(self.tcl_terms))  # a list from JSON or YAML
        require(bool(self.tcl_terms) and len(set(self.tcl_terms)) == len(self.tcl_terms)
                and set(self.tcl_terms) <= set(TCL_TERMS), "tcl_terms",
                f"must list each of {', '.join(TCL_TERMS)} at most once, and at least one (model.tcl_w: 0 drops both)",
                list(self.tcl_terms))
        require(self.text_chunk_size >= 1, "text_chunk_size", "must be >= 1", self.text_chunk_size)

    @property
    def active_tcl_terms(self) -> tuple[str, ...]:
        """The TCL terms the loss computes: ``tcl_terms``, or none when ``tcl_w`` is 0."""
        return self.tcl_terms if self.tcl_w else ()
