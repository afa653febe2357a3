"""Repairs of a backdoored model, beside detection: clean fine-tuning (Truong et al. 2020) and the
curves that compare it with l-infinity pruning (:mod:`sslguard.detectors.linf_pruning`)."""

from sslguard.repair.curves import (
    RepairCurve,
    as_curve,
    plot_repair_curves,
    repair_curves_markdown,
    repair_report_figure,
)
from sslguard.repair.finetune import FINETUNE_MODES, FinetuneResult, finetune, select_clean_subset

__all__ = [
    "FINETUNE_MODES", "FinetuneResult", "RepairCurve", "as_curve", "finetune", "plot_repair_curves",
    "repair_curves_markdown", "repair_report_figure", "select_clean_subset",
]
