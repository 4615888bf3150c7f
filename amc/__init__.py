"""AMC benchmark suite: Attention Map Consistency for visual grounding on ALBEF.

The library behind the workflow: synthetic benchmark and dataset readers
(:mod:`amc.data`), the ALBEF model and checkpoints (:mod:`amc.models`), GradCAM
(:mod:`amc.gradcam`), the AMC loss (:mod:`amc.losses`), pointing metrics
(:mod:`amc.metrics`), statistics (:mod:`amc.stats`), the training and evaluation
engines, downloads and reports.
"""

__version__ = "0.1.0"
