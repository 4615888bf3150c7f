"""Baselines of the AMC comparison, as plug-ins of amc's trainer and evaluator.

Importing this package registers the baselines' objectives (see
:mod:`amc.objectives`). The methods themselves are configurations:

- ``albef``: the starting checkpoint evaluated with GradCAM, no fine-tuning.
- ``albef_vg``: fine-tuned on the same VG data, schedule and seeds as AMC with the
  ALBEF objectives only (itc, itm, mlm): separates the data from the AMC loss.
- ``vmrm_style``: see :mod:`baselines.vmrm_style`.
"""
