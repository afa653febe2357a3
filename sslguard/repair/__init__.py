"""Repairs of a backdoored model, beside detection: clean fine-tuning (Truong et al. 2020), the
l-infinity neuron pruning (:mod:`sslguard.repair.linf_pruning`, Xu et al. 2021), fine-pruning with that
ranking (:mod:`sslguard.repair.fine_pruning`, Liu et al. 2018), and the curves that compare them."""

from sslguard.repair.curves import (
    RepairCurve,
    as_curve,
    plot_repair_curves,
    repair_curves_markdown,
    repair_report_figure,
)
from sslguard.repair.finetune import FINETUNE_MODES, FinetuneResult, finetune, select_clean_subset
from sslguard.repair.fine_pruning import FinePruningResult, fine_pruning
from sslguard.repair.linf_pruning import PruningResult, linf_pruning

__all__ = [
    "FINETUNE_MODES", "FinePruningResult", "FinetuneResult", "PruningResult", "fine_pruning", "RepairCurve", "as_curve", "finetune", "linf_pruning", "plot_repair_curves",
    "repair_curves_markdown", "repair_report_figure", "select_clean_subset",
]
