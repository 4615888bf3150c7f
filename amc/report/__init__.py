"""Reports over ``results/<run>/``: Table 1 against the paper, the ablation table, figures.

``amc report table1|ablation|figures|qualitative --run results/<run> --config results/<run>/workflow-config.json``
(see :mod:`amc.report.cli`). The data layer (:mod:`amc.report.tables`) is plain pandas
over the evaluation JSONs, so the notebook uses the same functions.
"""
