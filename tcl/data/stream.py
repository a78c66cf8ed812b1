"""The training stream: webdataset shards → augmented, tokenised, equal-size batches per worker.

The official stream (kakaobrain/tcl bc2b551, datasets/builder.py ``build_dataset``) uses webdataset
0.1, a 40k-sample shuffle buffer seeded from pid and time, and no resume. This one keeps the recipe
but is reproducible and resumable (docs/deviations.md, *Non-determinism* and *Shuffle memory*):

* Every (rank, dataloader worker) pair is a *slot*. Within an epoch a source's shards are shuffled
  with a seed derived from (seed, source, epoch) and dealt out to the slots; with fewer shards than
  slots, every slot reads all shards and keeps every ``slots``-th sample instead.
* Several sources (brace patterns, globs or folders) are mixed with fixed weights; the choice, the
  sample shuffle buffer and each sample's augmentation draw from seeds derived from (seed, slot,
  position), never from time or pid.
* Each batch carries, for its worker, the number of raw samples taken from the shuffled stream so
  far. A checkpoint stores those counters (:class:`StreamState`); on resume each worker replays its
  raw stream up to its counter *without decoding* (tar reading only) and continues, so an
  interrupted run sees exactly the samples of an uninterrupted one.
* Bad data never stops training; every skip is counted under its reason and the counts travel
  with the batches (:meth:`TrainingStream.skip_counts`): ``shard_missing`` (a shard a brace
  pattern names, a gap in a folder's ``<prefix>NNNNNN.tar`` numbering or a shard the download
  stage's work folder records, once per run; a shard gone while reading, per read),
  ``shard_truncated`` (a tar without its end-of-archive blocks, per read; its samples before the
  cut are used), ``corrupt_tar`` (a tar that cannot be read), ``incomplete_sample`` (no image or no
  caption), ``caption_not_utf8`` (skipped, not repaired with replacement characters: a caption
  with mojibake would teach the text encoder noise), ``empty_caption``, ``undecodable_image`` and
  ``augment_error``.

Memory: the shuffle buffer holds *raw* samples (JPEG bytes + caption). At the default 2,000
samples and ~70 KB per 512-px JPEG that is about 140 MB per worker (the official 40,000 held
~2.8 GB per worker, six workers per GPU).
"""

from __future__ import annotations

import glob
import io
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import TCLError
from ..model.tcl import IMAGENET_MEAN, IMAGENET_STD
from .config import AUGMENTATIONS, SHUFFLE_MODES, ShardSource, StreamConfig  # re-exported: the data section lives there
from .synthetic.captions import named_kinds
from .synthetic.vocabulary import STUFF_NAMES

__all__ = ["AUGMENTATIONS", "SHUFFLE_MODES", "ShardSource", "StreamConfig", "StreamState", "StreamError",
           "TrainingStream", "expand_shards", "build_transform", "build_loader"]

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
TEXT_KEYS = ("txt", "text")
# <prefix><index>.tar as the download stage names shards: a gap in the indices is a missing shard
_NUMBERED = re.compile(r"(?P<prefix>.*?)(?P<index>\d+)\.tar")
_TAR_BLOCK = 512


class StreamError(TCLError, ValueError):
    """The stream cannot start: no shards, or a resume state from another setup."""


@dataclass
class StreamState:
    """Resumable position of the stream on one rank: raw samples taken per worker, and skip counts."""

    seed: int
    world_size: int
    num_workers: int
    batches: int = 0
    consumed: dict[int, int] = field(default_factory=dict)
    skipped: dict[int, dict[str, int]] = field(default_factory=dict)

    def update(self, batch: dict) -> None:
        """Record a batch the trainer consumed (call once per training step)."""
        worker = int(batch["worker"])
        self.batches += 1
        self.consumed[worker] = int(batch["consumed"])
        self.skipped[worker] = dict(batch["skipped"])

    def skip_counts(self) -> dict[str, int]:
        total: Counter = Counter()
        for counts in self.skipped.values():
            total.update(counts)
        return dict(total)

    def to_dict(self) -> dict:
        return {"seed": self.seed, "world_size": self.world_size, "num_workers": self.num_workers,
                "batches": self.batches, "consumed": dict(self.consumed),
                "skipped": {k: dict(v) for k, v in self.skipped.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> StreamState:
        return cls(seed=int(data["seed"]), world_size=int(data["world_size"]),
                   num_workers=int(data["num_workers"]), batches=int(data.get("batches", 0)),
                   consumed={int(k): int(v) for k, v in data.get("consumed", {}).items()},
                   skipped={int(k): dict(v) for k, v in data.get("skipped", {}).items()})


def _missing_in_folder(folder: Path, present: list[Path]) -> list[str]:
    """Shards a folder should hold but does not: gaps in each ``<prefix>NNNNNN.tar`` numbering, and shards
    the download stage recorded (``.<prefix>img2dataset/NNNNNN_stats.json``) past the last one present."""
    expected: set[Path] = set()
    groups: dict[tuple[str, int], list[int]] = {}
    for path in present:
        if match := _NUMBERED.fullmatch(path.name):
            groups.setdefault((match["prefix"], len(match["index"])), []).append(int(match["index"]))
    for (prefix, width), indices in groups.items():
        expected.update(folder / f"{prefix}{i:0{width}d}.tar" for i in range(min(indices), max(indices) + 1))
    for work in folder.glob(".*img2dataset"):
        prefix = work.name[1:-len("img2dataset")]
        for stats in work.glob("*_stats.json"):
            index = stats.name.split("_", 1)[0]
            if index.isdigit():
                expected.add(folder / f"{prefix}{index}.tar")
    return sorted(str(p) for p in expected - set(present))


def _is_truncated(path: str) -> bool:
    """Whether a tar lacks the zero blocks that end every complete archive (a cut download or copy).

    webdataset reads a cut tar without any error up to the cut, so the cut is checked here.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, io.SEEK_END)
            if size < 2 * _TAR_BLOCK or size % _TAR_BLOCK:
                return True
            f.seek(size - 2 * _TAR_BLOCK)
            return f.read(2 * _TAR_BLOCK).count(0) != 2 * _TAR_BLOCK
    except OSError:
        return False  # missing or unreadable: the reader reports it


def expand_shards(patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expand brace patterns, globs and folders into (existing shard paths, missing paths).

    A brace pattern names its shards; for a folder, the missing ones are found by
    :func:`_missing_in_folder`. A glob cannot tell.
    """
    found, missing = [], []
    for pattern in patterns:
        for item in braceexpand.braceexpand(str(pattern)):
            path = Path(item)
            if path.is_dir():
                present = sorted(path.glob("*.tar"))
                found += [str(p) for p in present]
                missing += _missing_in_folder(path, present)
            elif any(ch in item for ch in "*?["):
                found += sorted(glob.glob(item))
            elif path.is_file():
                found.append(item)
            else:
                missing.append(item)
    return found, missing


def build_transform(config: StreamConfig):
    """Image transform: the paper's timm recipe or lighter variants for small synthetic data.

    The recipe is the official one (kakaobrain/tcl bc2b551, datasets/builder.py, build_img_transform).
    """
    from timm.data import create_transform
    from torchvision import transforms as T

    size = config.image_size
    if config.augment == "paper":
        # color_jitter is ignored by timm when auto_augment is set, exactly as in the original.
        return create_transform(size, is_training=True, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1",
                                re_prob=0.25, re_mode="pixel", re_count=1, interpolation="bilinear",
                                scale=(config.crop_scale_min, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if config.augment == "crop":
        return T.Compose([T.RandomResizedCrop(size, scale=(config.crop_scale_min, 1.0)),
                          T.RandomHorizontalFlip(), *normalize])
    if config.augment == "none":
        return T.Compose([T.Resize(size), T.CenterCrop(size), *normalize])
    raise StreamError(f"unknown augment {config.augment!r}; choose paper, crop or none")


class _SkipCounter:
    """webdataset exception handler that counts shard-level failures and continues.

    ``counts`` can be swapped: failures met while replaying to a resume point are already in the
    checkpoint's counts and must not be counted twice.
    """

    def __init__(self, counts: Counter) -> None:
        self.counts = counts

    def __call__(self, exn: Exception) -> bool:
        if isinstance(exn, FileNotFoundError):
            self.counts["shard_missing"] += 1
        elif "unexpected end of data" not in str(exn):  # a cut tar: counted as shard_truncated already
            self.counts["corrupt_tar"] += 1
        return True

    def checked(self, urls: Sequence[str]) -> Iterator[dict]:
        """The shards to read, as webdataset wants them, counting those that are cut short."""
        for url in urls:
            if _is_truncated(url):
                self.counts["shard_truncated"] += 1
            yield {"url": url}


class TrainingStream(IterableDataset):
    """An infinite stream of batches ``{"image", "text", "caption", "worker", "consumed", "skipped"}``.

    ``rank``/``world_size`` are passed explicitly (not read from torch.distributed), so the split is
    the same whoever builds the stream. Use with ``DataLoader(batch_size=None)``; see :func:`build_loader`.
    """

    def __init__(self, config: StreamConfig, rank: int = 0, world_size: int = 1,
                 resume: StreamState | None = None, tokenizer=None, shuffle_captions: str = "none") -> None:
        super().__init__()
        # The control experiments (train.shuffle_captions): every image is given the caption of
        # another image of its batch ("any"), or of one that names none of the kinds its own caption
        # names ("disjoint"), so training sees the same images, captions and steps without the pairing.
        if shuffle_captions not in SHUFFLE_MODES:
            raise StreamError(f"shuffle_captions must be one of {', '.join(SHUFFLE_MODES)}, got {shuffle_captions!r}")
        self.shuffle_captions = shuffle_captions
        if not config.sources:
            raise StreamError("no shard sources configured")
        self.config, self.rank, self.world_size = config, rank, world_size
        self.shards: list[list[str]] = []
        self.missing: list[str] = []
        for source in config.sources:
            found, missing = expand_shards(source.patterns)
            if not found:
                raise StreamError(f"no shards found for {source.name or list(source.patterns)} "
                                  f"({len(missing)} expected file(s) missing, e.g. {missing[:1]}): "
                                  "run the download stage or fix the pattern")
            self.shards.append(found)
            self.missing += missing  # reported by the trainer; the stream reads what exists
        workers = max(1, config.num_workers)
        if resume is not None and (resume.seed, resume.world_size, resume.num_workers) != \
                (config.seed, world_size, workers):
            raise StreamError(f"cannot resume the data stream exactly: checkpoint has seed {resume.seed}, world size "
                              f"{resume.world_size}, {resume.num_workers} workers; this run has {config.seed}, "
                              f"{world_size}, {workers}")
        self.resume = resume
        if tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer
            tokenizer = SimpleTokenizer(context_length=config.context_length)
        self.tokenizer = tokenizer
        self.transform = build_transform(config)

    def skip_counts(self, state: StreamState) -> dict[str, int]:
        """Samples and shards skipped so far, by reason: ``state``'s counts plus the shards missing at start."""
        counts = Counter(state.skip_counts())
        if self.missing:
            counts["shard_missing"] += len(self.missing)
        return dict(counts)

    def initial_state(self) -> StreamState:
        return self.resume or StreamState(self.config.seed, self.world_size, max(1, self.config.num_workers))

    # ------------------------------------------------------------------ raw samples (no decoding)
    def _source_samples(self, index: int, slot: int, slots: int, handler: _SkipCounter) -> Iterator[dict]:
        shards = self.shards[index]
        for epoch in range(2**62):
            order = list(shards)
            random.Random(f"{self.config.seed}/source{index}/epoch{epoch}").shuffle(order)
            by_shard = len(order) >= slots
            mine = order[slot::slots] if by_shard else order
            reader = wds.tarfile_samples(handler.checked(mine), handler=handler)
            produced = 0
            for position, sample in enumerate(reader):
                if by_shard or position % slots == slot:
                    produced += 1
                    yield sample
            if produced == 0 and epoch > 0:
                raise StreamError(f"source {index} yields no readable samples for slot {slot}")

    def _raw_samples(self, slot: int, slots: int, handler: _SkipCounter) -> Iterator[dict]:
        """This slot's undecoded samples: sources mixed by weight, then the seeded shuffle buffer."""
        sources = [self._source_samples(i, slot, slots, handler) for i in range(len(self.shards))]
        shuffle = wds.shuffle(bufsize=self.config.shuffle_buffer, initial=self.config.shuffle_initial,
                              rng=random.Random(f"{self.config.seed}/shuffle/slot{slot}"))
        return shuffle(self._mix(sources, slot) if len(sources) > 1 else sources[0])

    def _mix(self, sources: list[Iterator[dict]], slot: int) -> Iterator[dict]:
        weights = [source.weight for source in self.config.sources]
        chooser = random.Random(f"{self.config.seed}/mix/slot{slot}")
        indices = range(len(sources))
        while True:
            yield next(sources[chooser.choices(indices, weights)[0]])

    # ------------------------------------------------------------------ decoding
    def _prepare(self, sample: dict, seed: int, counts: Counter):
        image_bytes = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        text_bytes = next((sample[k] for k in TEXT_KEYS if k in sample), None)
        if image_bytes is None or text_bytes is None:
            counts["incomplete_sample"] += 1
            return None
        try:
            caption = text_bytes.decode("utf-8").strip()
        except UnicodeDecodeError:
            counts["caption_not_utf8"] += 1
            return None
        if not caption:
            counts["empty_caption"] += 1
            return None
        try:
            with Image.open(io.BytesIO(image_bytes)) as image:
                image = image.convert("RGB")
        except Exception:  # PIL raises many types for bad bytes; any of them means "skip"
            counts["undecodable_image"] += 1
            return None
        try:
            with _seeded(seed):  # augmentation randomness comes from the sample's position only
                tensor = self.transform(image)
        except ValueError:
            # timm's "increasing" posterize reaches 0 bits at magnitude 10, which Pillow >= 9.x
            # rejects (old Pillow returned a black image): ~0.1% of samples under the paper recipe.
            counts["augment_error"] += 1
            return None
        return tensor, caption

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        state = self.initial_state()
        loader_worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader takes batches from its workers round-robin, starting at worker 0. After
        # `batches` steps the next batch belongs to logical worker `batches % workers`, so a resumed
        # loader's worker i plays logical worker (i + batches) % workers.
        worker = (loader_worker + state.batches) % workers
        slot, slots = self.rank * workers + worker, self.world_size * workers
        start = state.consumed.get(worker, 0)
        counts: Counter = Counter(state.skipped.get(worker, {}))
        handler = _SkipCounter(Counter() if start else counts)
        raw = self._raw_samples(slot, slots, handler)
        for _ in range(start):  # replay to the resume point without decoding
            next(raw)
        handler.counts = counts
        images, captions = [], []
        for position, sample in enumerate(raw, start=start + 1):
            item = self._prepare(sample, _sample_seed(self.config.seed, slot, position), counts)
            if item is None:
                continue
            images.append(item[0])
            captions.append(item[1])
            if len(images) == self.config.batch_size:
                if self.shuffle_captions != "none":  # seeded by the batch's last position (negated: no sample's seed)
                    reassign = _derange if self.shuffle_captions == "any" else _derange_disjoint
                    captions = reassign(captions, _sample_seed(self.config.seed, slot, -position))
                yield {"image": torch.stack(images), "text": self.tokenizer(captions), "caption": captions,
                       "worker": worker, "consumed": position, "skipped": dict(counts)}
                images, captions = [], []


def _derange(captions: list[str], seed: int) -> list[str]:
    """``captions`` re-assigned so that no index keeps its own: a random order, each taking the next one's."""
    if len(captions) < 2:
        return captions
    order = list(range(len(captions)))
    random.Random(seed).shuffle(order)
    out = list(captions)
    for here, there in zip(order, order[1:] + order[:1], strict=True):
        out[here] = captions[there]
    return out


_STUFF_NAMES = frozenset(STUFF_NAMES)


def _derange_disjoint(captions: list[str], seed: int) -> list[str]:
    """``captions`` re-assigned so that no image is given a caption naming a kind the image may show.

    Kinds are read from the captions (:func:`~tcl.data.synthetic.named_kinds`). An image may be given a
    caption that names none of the kinds its own caption names; one that names a background only if
    its own caption names its background too, because a caption silent about the background says
    nothing about which one the image shows. A maximum bipartite matching (Kuhn's augmenting paths,
    over a seeded random order) finds such an assignment; in the rare batch where none covers every
    image (say, a car in nearly every image), the images left over are given the captions left
    over, still never their own.
    """
    n = len(captions)
    if n < 2:
        return captions
    rng = random.Random(seed)
    kinds = [named_kinds(c) for c in captions]
    backgrounds = [k & _STUFF_NAMES for k in kinds]
    options = []
    for i in range(n):
        allowed = [j for j in range(n) if j != i and not kinds[i] & kinds[j]
                   and (backgrounds[i] or not backgrounds[j])]
        rng.shuffle(allowed)
        options.append(allowed)
    owner: dict[int, int] = {}  # caption index -> image index

    def augment(image: int, seen: set[int]) -> bool:
        for j in options[image]:
            if j not in seen:
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = image
                    return True
        return False

    images = list(range(n))
    rng.shuffle(images)
    unmatched = [i for i in images if not augment(i, set())]
    assigned = {image: caption for caption, image in owner.items()}
    if unmatched:  # the leftovers, deranged among themselves; a lone leftover swaps with a matched image
        free = sorted(set(range(n)) - set(owner))
        if len(unmatched) == 1 and free == unmatched:
            i, other = unmatched[0], images[0] if images[0] != unmatched[0] else images[1]
            assigned[i], assigned[other] = assigned[other], i
        else:
            order = list(range(len(unmatched)))
            while any(unmatched[k] == free[v] for k, v in enumerate(order)):
                rng.shuffle(order)
            assigned.update({unmatched[k]: free[v] for k, v in enumerate(order)})
    return [captions[assigned[i]] for i in range(n)]


def _sample_seed(seed: int, slot: int, position: int) -> int:
    return ((seed * 1_000_003 + slot) * 1_000_000_007 + position) % (2**31 - 1)


@contextmanager
def _seeded(seed: int):
    """Seed Python's, NumPy's and torch's RNGs (timm and torchvision draw from all three), then restore."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        # The CPU generator alone (what torch.manual_seed seeds first): torch.manual_seed also seeds every
        # accelerator backend, and in a forked DataLoader worker each of those calls records a traceback
        # for lazy initialisation (torch.xpu._lazy_call) -- per sample, about a fifth of a worker's time.
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def build_loader(stream: TrainingStream) -> DataLoader:
    """A DataLoader over the stream's batches (round-robin over workers, deterministic order)."""
    workers = stream.config.num_workers
    return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available(), prefetch_factor=2 if workers > 0 else None)
