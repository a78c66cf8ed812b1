"""The built-in synthetic world: the default data set, generated offline on a CPU in about a minute.

The whole pipeline (download, tiny-CLIP pre-training, TCL training, evaluation) must run on a
laptop with no downloads, so this module draws a small world that a CLIP trained from scratch for a
few CPU minutes can learn *densely*, not only at the caption level. A prototype with random-colour
shapes on 64 px images taught that lesson: the tiny CLIP matched captions, but its patch features
did not segment. Therefore every object kind has its own colour, texture *and* silhouette (a red
car with dark wheels, a yellow bus with a row of windows, a ginger cat with tabby stripes, ...),
objects are large (each at least ``min_object_frac`` of the image, 1/16 by default, measured after
occlusion and after carving a 1-px rim) and barely occluded, and backgrounds come from six "stuff"
kinds with their own look (grass, sky, sand, sea, brick wall, road) so that background patches are
learnable too.

Three products, all under one output folder written atomically (see :func:`generate_synthetic`):

* ``corpus/``: N image-caption pairs, ``images/<shard>/<id>.jpg`` plus ``pairs.tsv`` with the header
  ``caption<TAB>url`` (CC3M's column order) whose urls are relative to ``corpus/``: the download
  stage serves that folder over loopback HTTP and fetches it with img2dataset, like real data.
* ``VOCdevkit/VOC2012/``: a PASCAL VOC 2012 look-alike (JPEGImages, palette SegmentationClass PNGs
  with VOC indices and a 255 rim, ImageSets/Segmentation/{train,val}.txt).
* ``coco_stuff164k/``: a COCO-Stuff-164k look-alike: raw maps (COCO category id − 1, stuff 91..181)
  and mmseg's ``_labelTrainIds.png`` maps (0..170), so COCO-Object conversion and mmseg's
  ``COCOStuffDataset`` read it unchanged.

Benchmark class ids are looked up by *name* in mmseg's ``METAINFO`` (never hard-coded), so a
vocabulary typo fails loudly instead of silently scoring the wrong class.

Every image is drawn from its own random stream ``(seed, stream, index)``: outputs are identical
for any number of worker processes, and the evaluation sets (streams 1..4) never share scenes with
the corpus (stream 0).

The code is split by concern: :mod:`.vocabulary` (the object and stuff kinds), :mod:`.draw`
(silhouettes, textures, backgrounds), :mod:`.render` (layout and :func:`render_scene`),
:mod:`.captions`, :mod:`.benchmarks` (mmseg class ids and label maps) and :mod:`.generate` (the
output layout, :func:`generate_synthetic` and :func:`measure_throughput`); :mod:`.errors` holds
:class:`SyntheticError`; :mod:`.config` the torch-free :class:`SyntheticParams` (``params.yaml``'s ``synthetic``).
"""

from ..._exports import lazy_exports

_WHERE = {
    "GENERATOR_VERSION": "generate",
    "ObjectKind": "vocabulary",
    "StuffKind": "vocabulary",
    "OBJECT_KINDS": "vocabulary",
    "STUFF_KINDS": "vocabulary",
    "KIND_NAMES": "vocabulary",
    "STUFF_NAMES": "vocabulary",
    "Scene": "render",
    "SyntheticParams": "config",
    "SyntheticError": "errors",
    "BenchmarkIds": "benchmarks",
    "benchmark_ids": "benchmarks",
    "render_scene": "render",
    "named_kinds": "captions",
    "voc_label_map": "benchmarks",
    "coco_stuff_label_maps": "benchmarks",
    "generate_synthetic": "generate",
    "measure_throughput": "generate",
    "CORPUS_DIR": "generate",
    "PAIRS_FILE": "generate",
    "MANIFEST_FILE": "generate",
    "VOC_DIR": "generate",
    "COCO_STUFF_DIR": "generate",
    "STREAMS": "generate",
    "VOC_BOUNDARY": "benchmarks",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
