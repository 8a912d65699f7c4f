"""Loss-MSE sensitivity of each layer to each precision, from one forward and backward pass
(first-order Taylor expansion of each sample's loss, arXiv 2505.13060), with the ground
truth and baselines it is validated against.

Public API: the table (``SensitivityTable``, ``SensitivityRow``; a store writes and reads
one with ``Store.put_sensitivity_table`` / ``Store.sensitivity_table``); computing it
(``analyze``, ``per_sample_terms``, ``causal_lm_loss``, ``per_sample_losses``,
``quantizable_layers``, ``emulated``); calibration data
(``load_calibration``, ``from_ids``, ``from_text``, ``CalibrationSet``); ground truth and
baselines (``direct_table``, ``weight_only_table``, ``fisher_table``, ``measured_loss_mse``);
validation (``random_configs``, ``validate``, ``scatter_plot``).
"""

from hwcost.sensitivity.data import CalibrationSet, fingerprint_ids, from_ids, from_text, load_calibration
from hwcost.sensitivity.layers import emulated, quantizable_layers
from hwcost.sensitivity.loss import causal_lm_loss, per_sample_losses
from hwcost.sensitivity.records import SensitivityRow, SensitivityTable
from hwcost.sensitivity.reference import direct_table, fisher_table, measured_loss_mse, weight_only_table
from hwcost.sensitivity.taylor import DEFAULT_PRECISIONS, PerSampleTerms, analyze, per_sample_terms
from hwcost.sensitivity.validate import ValidationResult, random_configs, scatter_plot, validate

__all__ = [
    # the table
    "SensitivityRow", "SensitivityTable",
    # computing it
    "DEFAULT_PRECISIONS", "PerSampleTerms", "analyze", "per_sample_terms",
    "causal_lm_loss", "per_sample_losses", "emulated", "quantizable_layers",
    # calibration data
    "CalibrationSet", "fingerprint_ids", "from_ids", "from_text", "load_calibration",
    # ground truth, baselines, validation
    "direct_table", "fisher_table", "measured_loss_mse", "weight_only_table",
    "ValidationResult", "random_configs", "scatter_plot", "validate",
]
