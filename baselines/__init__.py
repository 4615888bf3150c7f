"""Baselines of the AMC comparison, as plug-ins of amc's trainer and evaluator.

``amc`` never imports this package: a run configuration names a baseline's objective by its
class, ``class: "baselines.vmrm_style:VmrmContrastive"`` (:mod:`amc.objectives.registry`), and
building the run's objectives imports that module, which registers its objectives. The methods
themselves are configurations (the ``methods`` of ``config/config.yaml``, docs/baselines.md):

- ``albef``: the starting checkpoint evaluated with GradCAM, no fine-tuning.
- ``albef_vg``: fine-tuned on the same VG data, schedule and seeds as AMC with the
  ALBEF objectives only (itc, itm, mlm): separates the data from the AMC loss.
- ``vmrm_style``: a documented approximation of VMRM (Dou & Peng, 2021) on the ALBEF
  backbone, trained on captions only with phrase-patch pseudo-pairs from a frozen copy
  of the starting model: objectives ``vmrm_contrastive`` and ``vmrm_consistency``
  (:mod:`baselines.vmrm_style`).
"""

from baselines import vmrm_style  # noqa: F401  (registers vmrm_contrastive, vmrm_consistency)
