"""``amc synth``: the synthetic grounding benchmark, written in the real datasets' raw formats.

Every image shows 3-6 simple objects (a shape, a colour and a size) on a noisy, cluttered
background. Texts name objects by their attributes and by spatial relations to other objects,
and several objects in an image share a shape or a colour, so a model has to read the text to
point at the right one. The same scenes are written as:

* ``vg/``         a Visual-Genome-like training set (image_data, region descriptions,
                  attributes, relationships), images in ``vg/VG_100K/``;
* ``amc/``        the same VG phrases in the format of the AMC authors' released training files
                  (``vg_descriptions.json``, ``vg_attributes_spatial.json``, ``vg_attributes.json``),
                  image paths relative to ``vg/``;
* ``flickr30k/``  a Flickr30k-Entities-like set (Sentences, Annotations, split files),
                  images in ``flickr30k/flickr30k-images/``;
* ``refcoco+/``   a RefCOCO+-like set (``refs(unc).p``, ``instances.json``), images in
                  ``coco/train2014/``;
* ``captions/``   ALBEF-format pretraining captions (``pretrain.json``) on their own images;
* ``vocab/vocab.txt``  a 512-line WordPiece vocabulary covering every word the generator emits;
* ``SYNTH_INFO.json``  seed, scale, counts and generator parameters (written last).

Everything is a pure function of the seed: each image draws from its own RNG seeded from
``(seed, subset, index)``, JSON is written with sorted keys and JPEGs at a fixed quality, so the
same seed gives byte-identical files (with the same Pillow/libjpeg). The whole tree is built in a
temporary sibling folder and moved into place at the end, so an interrupted run leaves nothing
that looks complete. See ``docs/data.md`` for the layout.

The package mirrors ``amc/data/`` (one reader per format there, one writer per format here):
:mod:`~amc.synth.scale` (how much), :mod:`~amc.synth.scene` (objects, placement, rendering),
:mod:`~amc.synth.language` (words, the vocabulary, descriptions), :mod:`~amc.synth.output`
(the folder being written), the writers :mod:`~amc.synth.refcoco`, :mod:`~amc.synth.flickr30k`,
:mod:`~amc.synth.vg` (with :mod:`~amc.synth.vg_released`) and :mod:`~amc.synth.captions`, and
:mod:`~amc.synth.build` (:func:`generate` and the command line).
"""

from amc.synth.build import configure_parser, generate, run
from amc.synth.language import vocabulary_lines, vocabulary_words
from amc.synth.refcoco import REFCOCO_GROUP_A, REFCOCO_GROUP_B
from amc.synth.scale import SCALES, SynthScale
from amc.synth.scene import COLOURS, SHAPES, make_scene, render
from amc.synth.vg_released import RELEASED_VG_FILES, released_vg_entries

__all__ = [
    "COLOURS",
    "REFCOCO_GROUP_A",
    "REFCOCO_GROUP_B",
    "RELEASED_VG_FILES",
    "SCALES",
    "SHAPES",
    "SynthScale",
    "configure_parser",
    "generate",
    "make_scene",
    "released_vg_entries",
    "render",
    "run",
    "vocabulary_lines",
    "vocabulary_words",
]
