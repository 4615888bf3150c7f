"""``amc bench``: the suite's fast path against the released code's path, side by side in one run.

Everything runs on random weights and random data of the requested shape (no dataset, no
checkpoint), so a run measures the model and the engine, not the disk. For each *path*:

* the **training step** of AMC (itc + itm + mlm + amc) and of plain ALBEF (itc + itm + mlm):
  image-text pairs per second, peak memory, FLOPs of one step and the achieved TFLOP/s (and
  the model FLOPs utilisation against ``--peak-tflops``);
* the **evaluation** loop that makes one GradCAM map per case: cases per second, peak memory,
  FLOPs per case.

The paths:

``reference`` mirrors the released AMC code (AMC-grounding, on ALBEF): fp32 (TF32 off unless
``--tf32``), explicit-softmax attention everywhere (``set_attention("reference")``), a plain
per-parameter AdamW, the momentum update as a Python loop over the parameters, and an
evaluation that runs the whole model on every image-text pair (the image encoded again for
each phrase) with a full ``loss.backward()`` at the released batch of 8, like the released
``grounding_eval``. ``reference-tf32`` is the same with TF32 matmuls (the released code's
188 pairs/s configuration on an H100).

``fast`` is the suite's own engine: bf16 autocast on CUDA (fp32 on CPU), SDPA wherever no
attention probabilities are captured (``set_attention("fast")``), fused AdamW on CUDA
(``amc.train.build_optimizer``), the foreach momentum update, and an evaluation that encodes
each image once under ``no_grad`` for all its phrases and back-propagates through the fusion
layers only (``amc.gradcam.gradcam_eval`` with ``image_index``), at larger batches.
``--compile`` also wraps the encoders in ``torch.compile`` (only where no second-order
gradient passes).

Every run also checks that the paths agree (unless ``--measure`` leaves ``equivalence`` out):
the losses of two training steps from the same weights and batch (dropout off), and the
GradCAM maps of the same cases (Pearson correlation per case, and the pointing point after
bicubic upsampling to a random original size). The results go to a JSON file and a markdown
table; the exit status is 1 when an equivalence check fails.

The package, one module per part:

* :mod:`amc.bench.settings`: :class:`BenchSettings` (what to measure) and the fixed values;
* :mod:`amc.bench.data`: random training batches and evaluation cases;
* :mod:`amc.bench.paths`: the paths (model, optimiser, training step, GradCAM recipe of each);
* :mod:`amc.bench.measure`: throughput, memory and FLOPs of one path;
* :mod:`amc.bench.equivalence`: the equivalence checks;
* :mod:`amc.bench.runner`: the whole run (:func:`run_bench`) and its :class:`BenchReport`;
* :mod:`amc.bench.tables`: the markdown table;
* :mod:`amc.bench.cli`: the ``amc bench`` command line.
"""

from amc.bench.cli import configure_parser, run
from amc.bench.data import EvalCases, make_eval_cases, make_train_batch, special_ids_for
from amc.bench.equivalence import check_eval_equivalence, check_train_equivalence, pearson
from amc.bench.paths import PathSpec, build_model, path_spec, reference_gradcam, run_eval_batch
from amc.bench.runner import BenchReport, initial_weights, run_bench
from amc.bench.settings import BenchSettings
from amc.bench.tables import to_markdown

__all__ = [
    "BenchReport",
    "BenchSettings",
    "EvalCases",
    "PathSpec",
    "build_model",
    "check_eval_equivalence",
    "check_train_equivalence",
    "configure_parser",
    "initial_weights",
    "make_eval_cases",
    "make_train_batch",
    "path_spec",
    "pearson",
    "reference_gradcam",
    "run",
    "run_bench",
    "run_eval_batch",
    "special_ids_for",
    "to_markdown",
]
