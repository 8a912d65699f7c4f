"""hwcost: a persistent, device-keyed database of measured precision costs, and the tools
that fill it (profiles, sensitivity) and plan from it (planner).

The public API below is loaded on first use (``lazy_loader``): ``import hwcost`` reads no
database driver, no numpy and no torch, so the CLI and a planning laptop start fast.
The command line and the main job (``hwcost.app``) sit above the library and are not part of
this API.
"""

import lazy_loader

__version__ = "0.1.0"

_WHERE = {
    "store": ["Store", "open_store", "default_url", "DeviceRef", "ModelRef", "MeasurementIn",
              "SubgraphInfo", "SlotInfo", "ManifestItem", "export_bundle", "import_bundle",
              "run_query", "summarize", "schema_status"],
    "precision": ["Precision", "parse_precision", "parse_precisions"],
    "shape": ["Shape", "parse_shape"],
    "workload": ["Workload", "parse_workload", "workload_shapes"],
    "quantizer": ["Quantizer", "parse_quantizer"],
    "enums": ["DeviceKind", "DeploymentMode", "CostSource", "ConflictRule", "TaskState",
              "SensitivityMethod"],
    "device": ["DeviceInfo", "local_device"],
    "costs": ["CostModel", "Estimate", "model_table"],
    "errors": ["HwcostError", "StoreError", "SchemaTooNew", "NoSuchDevice", "NoSuchModel",
               "InvalidMeasurement", "UnknownPrecision", "BadShape", "BadWorkload",
               "BundleInvalid", "Infeasible", "NoEstimate", "PlanInvalid"],
}
"""Each module of this package and the public names it defines."""

__getattr__, __dir__, _ = lazy_loader.attach(__name__, submod_attrs=_WHERE)

__all__ = [
    "__version__",
    # the store: open it by URL; records cross its boundary
    "Store", "open_store", "default_url", "DeviceRef", "ModelRef", "MeasurementIn",
    "SubgraphInfo", "SlotInfo", "ManifestItem",
    # names: precisions, shapes, workloads, quantizers and the fixed name sets
    "Precision", "parse_precision", "parse_precisions", "Shape", "parse_shape", "Workload",
    "parse_workload", "workload_shapes", "Quantizer", "parse_quantizer", "DeviceKind",
    "DeploymentMode", "CostSource", "ConflictRule", "TaskState", "SensitivityMethod",
    # devices and costs
    "DeviceInfo", "local_device", "CostModel", "Estimate", "model_table",
    # sharing and inspecting a store
    "export_bundle", "import_bundle", "run_query", "summarize", "schema_status",
    # errors (every one is a HwcostError; the CLI prints it as one line)
    "HwcostError", "StoreError", "SchemaTooNew", "NoSuchDevice", "NoSuchModel",
    "InvalidMeasurement", "UnknownPrecision", "BadShape", "BadWorkload", "BundleInvalid",
    "Infeasible", "NoEstimate", "PlanInvalid",
]
