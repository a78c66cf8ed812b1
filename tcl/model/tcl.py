"""The TCL model: frozen open_clip CLIP + trainable masker, training losses and inference.

Cha et al., "Learning to Generate Text-grounded Mask for Open-world Semantic Segmentation from Only
Image-Text Pairs", CVPR 2023. Behaviour follows the official code (kakaobrain/tcl bc2b551,
models/tcl/tcl.py, ``TCL``); the fixes listed in docs/deviations.md that apply here are noted where
they happen (no mandatory torch.distributed, no wasted CLIP block in training, cached positional
embeddings, one CLIP for both towers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..runtime import gather_cat, get_rank, get_world_size
from .clip_towers import (
    PositionalEmbeddingCache,
    embed_patches,
    encode_captions,
    project_tokens,
    run_blocks,
    run_first_token_block,
    tokens_to_map,
)
from .config import TCLConfig  # re-exported: the model section lives beside, torch-free
from .losses import (
    ImageTextContrastiveLoss,
    RegionTextContrastiveLoss,
    area_prior_loss,
    masked_average_pool,
    total_variation,
)
from .masker import Masker, l2_normalize
from .pamr import pamr
from .templates import get_templates

__all__ = ["TCLConfig", "TCL", "IMAGENET_MEAN", "IMAGENET_STD"]

# TCL normalises CLIP inputs with ImageNet statistics, not CLIP's (docs/deviations.md,
# *ImageNet normalisation*); the
# released weights were trained this way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TCL(nn.Module):
    """TCL on an open_clip ViT CLIP.

    ``clip`` is an open_clip ``CLIP`` (ViT image tower, standard text tower). It is frozen and kept in
    eval mode; the trainable parameters are the masker's and the two loss temperatures.
    Images passed to :meth:`forward` and :meth:`generate_masks` are ImageNet-normalised tensors
    (see :meth:`normalize`).
    """

    def __init__(self, clip: nn.Module, config: TCLConfig | None = None, tokenizer=None) -> None:
        super().__init__()
        config = config or TCLConfig()
        visual = clip.visual
        depth = len(visual.transformer.resblocks)
        if not 1 <= config.ie_freeze < depth:
            # ConfigError (a ValueError): the parameters describe a model this CLIP cannot make
            raise ConfigError(f"ie_freeze must be in 1..{depth - 1} for a {depth}-block CLIP, "
                             f"got {config.ie_freeze}")
        if getattr(visual, "attn_pool", None) is not None or visual.proj is None or \
                getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
            raise ConfigError("TCL needs a ViT CLIP image tower with class-token or average pooling and a projection")
        self.config = config
        self.clip = clip.eval().requires_grad_(False)
        self.masker = Masker(visual, config.ie_freeze, config.decoder_stages, config.sim2mask_init_w,
                             config.sim2mask_init_b, config.gumbel_tau)
        self.image_loss = ImageTextContrastiveLoss()
        self.region_loss = RegionTextContrastiveLoss()
        self.patch_size = visual.conv1.kernel_size[0]
        self.decoder_only = False
        self._batch_first = getattr(visual.transformer, "batch_first", True)
        self._pos_cache = PositionalEmbeddingCache()
        if tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer
            tokenizer = SimpleTokenizer(context_length=getattr(clip, "context_length", 77))
        self.tokenizer = tokenizer
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.set_decoder_only(False)  # the block copies inherited CLIP's requires_grad=False

    # ----------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> TCL:
        """Like ``nn.Module.train`` but CLIP always stays in eval mode, and so does the masker's
        backbone during the decoder-only (UST) phase."""
        super().train(mode)
        self.clip.eval()
        if self.decoder_only:
            self.masker.blocks.eval()
        return self

    def set_decoder_only(self, decoder_only: bool, freeze: bool = True) -> None:
        """Switch the decoder-only (UST) phase (official ``TCL.set_train``): the masker's ViT block copies
        stay in eval mode and, with ``freeze``, get ``requires_grad=False``. CLIP is always frozen.

        Distributed training passes ``freeze=False``: DDP only registers parameters that require grad when
        it is built, and the official code's toggling left the block copies un-synchronised after the switch
        (docs/deviations.md, *UST gradients*). The trainer then discards their gradients during the phase
        instead.
        """
        self.decoder_only = decoder_only
        self.clip.requires_grad_(False)
        self.masker.requires_grad_(True)
        self.masker.blocks.requires_grad_(not (decoder_only and freeze))
        self.train(self.training)

    def decoder_only_frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters the decoder-only phase keeps fixed (the masker's ViT block copies)."""
        return list(self.masker.blocks.parameters())

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    # ----------------------------------------------------------------------------- towers
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB images in [0, 1], [B, 3, H, W] → the ImageNet-normalised input TCL expects."""
        return (images - self.pixel_mean) / self.pixel_std

    def clip_features(self, image: torch.Tensor):
        """Frozen CLIP tokens after block ``ie_freeze`` [B, 1+h·w, width] and the patch grid."""
        x, grid = embed_patches(self.clip.visual, image, self._pos_cache)
        blocks = self.clip.visual.transformer.resblocks[: self.config.ie_freeze]
        return run_blocks(blocks, x, self_only_last=False, batch_first=self._batch_first), grid

    def maskclip_dense(self, clip_tokens: torch.Tensor, grid) -> torch.Tensor:
        """Frozen MaskCLIP dense embedding [B, D, h, w]: the remaining CLIP blocks with the last one
        self-only, then the frozen ``ln_post``/``proj`` per token (the KP branch, official ``TCL.kp_branch``)."""
        visual = self.clip.visual
        blocks = visual.transformer.resblocks[self.config.ie_freeze:]
        x = run_blocks(blocks, clip_tokens, self_only_last=True, batch_first=self._batch_first)
        return tokens_to_map(project_tokens(visual.ln_post, visual.proj, x), grid)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Standard CLIP image embedding [B, D] at any input size: ``ln_post`` then the tower's own
        pooling (class token, as in OpenAI's CLIP, or the mean of the patch tokens), then ``proj``."""
        visual = self.clip.visual
        x, _ = embed_patches(visual, image, self._pos_cache)
        blocks = visual.transformer.resblocks
        if getattr(visual, "pool_type", "tok") == "tok":
            # Class-token pooling reads one row of the last block: compute only that row
            # (exact; the official code ran the whole block, kakaobrain/tcl bc2b551 sclip/model.py).
            x = run_blocks(blocks[:-1], x, self_only_last=False, batch_first=self._batch_first)
            x = run_first_token_block(blocks[-1], x, self._batch_first)
        else:
            x = run_blocks(blocks, x, self_only_last=False, batch_first=self._batch_first)

        def pool(tokens: torch.Tensor) -> torch.Tensor:
            return tokens[:, 1:].mean(dim=1) if getattr(visual, "pool_type", "tok") == "avg" else tokens[:, 0]

        if getattr(visual, "final_ln_after_pool", False):
            return visual.ln_post(pool(x)) @ visual.proj
        return pool(visual.ln_post(x)) @ visual.proj

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Un-normalised CLIP text embedding [N, D] (frozen text tower, EOT pooling)."""
        return self.clip.encode_text(tokens, normalize=False)

    def tokenize(self, texts) -> torch.Tensor:
        """CLIP BPE tokens [N, context] with truncation (EOT kept as the last token)."""
        return self.tokenizer(list(texts))

    @torch.no_grad()
    def build_text_embedding(self, class_names, template: str = "custom") -> torch.Tensor:
        """Zero-shot class embeddings [K, D], L2-normalised.

        Every (class, template) prompt is encoded; the *un-normalised* embeddings are averaged over
        templates and the mean is normalised, as in the official code
        (docs/deviations.md, *Prompt ensembling*).
        """
        class_names = list(class_names)
        if not class_names:
            raise ValueError("build_text_embedding needs at least one class name")
        templates = get_templates(template)
        prompts = [t.format(name) for name in class_names for t in templates]
        tokens = self.tokenize(prompts).to(self.pixel_mean.device)
        chunk = self.config.text_chunk_size
        emb = torch.cat([self.encode_text(tokens[i:i + chunk]) for i in range(0, len(tokens), chunk)])
        emb = emb.view(len(class_names), len(templates), -1).mean(dim=1)
        return l2_normalize(emb, dim=-1)

    # ----------------------------------------------------------------------------- training
    def forward(self, image: torch.Tensor, text_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training losses for a batch of normalised images [B, 3, H, W] and captions [B, context].

        Returns a dict: the weighted loss terms (keys containing ``loss``; their sum is the
        objective) and detached ``mask`` / ``neg_mask`` for logging the mask areas.
        """
        cfg = self.config
        with torch.no_grad():
            # Only the blocks the masker needs: the official code also ran CLIP's last block here
            # and discarded it (docs/deviations.md, *CLIP wrapper waste*).
            clip_tokens, grid = self.clip_features(image)
            text_emb = encode_captions(self.clip, text_tokens)  # = encode_text, on the used positions only

        batch = image.shape[0]
        dense = self.masker.dense_embedding(clip_tokens, grid)  # V [B, D, H', W']
        all_text = gather_cat(text_emb)  # [N, D]; constant, the text tower is frozen
        similarity = self.masker.similarity(dense, all_text)  # [B, N, H', W'], normalises both
        hard, soft = self.masker.sim2mask(similarity, stochastic=True)

        positive = torch.arange(batch, device=image.device) + batch * get_rank()
        rows = torch.arange(batch, device=image.device)
        pos_hard = hard[rows, positive].unsqueeze(1)
        soft_pos = soft[rows, positive].unsqueeze(1)
        off_diagonal = torch.ones(soft.shape[:2], dtype=torch.bool, device=soft.device)
        off_diagonal[rows, positive] = False
        soft_neg = soft[off_diagonal].view(batch, soft.shape[1] - 1, *soft.shape[2:])

        out = {"mask": soft_pos.detach(), "neg_mask": soft_neg.detach()}
        if cfg.area_w:
            out["area_loss"] = cfg.area_w * area_prior_loss(soft_pos, cfg.pos_area_prior)
            out["neg_area_loss"] = cfg.area_w * area_prior_loss(soft_neg, cfg.neg_area_prior)
        if "region" in cfg.active_tcl_terms:
            pooled = masked_average_pool(dense, soft)
            out["tclf_loss"] = cfg.tcl_w * self.region_loss(pooled, text_emb)
        if cfg.tv_w:
            out["tv_img_loss"] = cfg.tv_w * total_variation(dense)
            out["tv_mask_loss"] = cfg.tv_w * total_variation(soft)
        if "image" in cfg.active_tcl_terms:
            # Gradients flow through the frozen CLIP into the straight-through hard mask.
            pos_full = F.interpolate(pos_hard, size=image.shape[-2:], mode="nearest")
            out["tcli_loss"] = cfg.tcl_w * self.image_loss(self.encode_image(pos_full * image), text_emb)
        return out

    @staticmethod
    def total_loss(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of the entries whose key contains ``loss``."""
        return sum(value for key, value in outputs.items() if "loss" in key)

    # ----------------------------------------------------------------------------- inference
    def _padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        def split(size: int) -> tuple[int, int]:
            total = (-size) % self.patch_size
            return total // 2, total - total // 2
        return (*split(width), *split(height))

    @torch.no_grad()
    def generate_masks(self, image: torch.Tensor, text_emb: torch.Tensor, apply_pamr: bool = False,
                       kp_w: float = 0.3) -> torch.Tensor:
        """Soft masks [B, K, H, W] in [0, 1] for normalised images [B, 3, H, W] and texts [K, D].

        As the official ``TCL.generate_masks`` (kakaobrain/tcl bc2b551, models/tcl/tcl.py): zero-pad to a
        multiple of the patch size (split left/right, top/bottom), masker soft masks at stride 4, optional
        PAMR at that resolution, then KP mixing with the frozen MaskCLIP masks (``kp_w`` weight, after
        PAMR), bilinear resize, and crop.
        """
        height, width = image.shape[-2:]
        pad = self._padding(height, width)
        if any(pad):
            image = F.pad(image, pad)
        text_emb = text_emb.to(image.dtype)

        # Under autocast (bf16 / fp16 inference) only the networks run in low precision: CLIP's blocks, the
        # masker's and the decoder. The cosine similarities, sigmoids, PAMR and the KP mixing decide
        # which class wins a pixel and are cheap, so they run in fp32 (docs/evaluation.md, *Precision*).
        clip_tokens, grid = self.clip_features(image)
        dense = self.masker.dense_embedding(clip_tokens, grid)
        kp_dense = self.maskclip_dense(clip_tokens, grid) if kp_w else None
        with torch.autocast(image.device.type, enabled=False):
            text_emb = text_emb.float()
            masks = torch.sigmoid(self.masker.sim2mask.logits(Masker.similarity(dense.float(), text_emb)))
            if apply_pamr:
                guide = F.interpolate(image.float(), size=masks.shape[-2:], mode="bilinear", align_corners=True)
                masks = pamr(guide, masks)
            if kp_w:
                masks = kp_w * self._keypoint_masks(kp_dense.float(), text_emb, masks.shape[-2:]) \
                    + (1.0 - kp_w) * masks
            masks = F.interpolate(masks, size=image.shape[-2:], mode="bilinear", align_corners=False)
        left, _, top, _ = pad
        return masks[:, :, top:top + height, left:left + width]

    @staticmethod
    def _keypoint_masks(maskclip_dense, text_emb, size) -> torch.Tensor:
        """KP branch: the untrained Sim2Mask (σ(10·(s − 0.25))) on frozen MaskCLIP features."""
        kp = torch.sigmoid((Masker.similarity(maskclip_dense, text_emb) - 0.25) * 10.0)
        return F.interpolate(kp, size=size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"ie_freeze={self.config.ie_freeze}, world_size={get_world_size()}"
