"""On-device profiling: partition models into sequential subgraphs, deploy precisions with
real kernels, time them, and fill the hwcost store.

The names below load their module (and torch) on first use (``lazy_loader``); backends and
their deployment are :mod:`profiles.backends`; the partitioner is
``profiles.partition.partition`` (the package attribute ``partition`` stays the module).
"""

import lazy_loader

_WHERE = {
    "loading": ["LoadedModel", "load_model", "demo_model_dir"],
    "partition": ["Partition", "Piece", "register_model"],
    "campaign": ["CampaignReport", "TimingOptions", "QUICK_TIMING", "cut_model", "run_campaign",
                 "profiled_precisions"],
    "bench": ["Timing", "time_interleaved", "time_one"],
    "stability": ["StabilityPolicy", "Verdict", "judge"],
    "precisions": ["Emulation", "emulation"],
    "checkpoint": ["checkpoint_digest"],
    "signature": ["model_fingerprint"],
    "calibrate": ["calibrate_cpu"],
}
"""Each module of this package and the public names it defines."""

__getattr__, __dir__, _ = lazy_loader.attach(__name__, submod_attrs=_WHERE)

__all__ = [
    # loading and cutting a model
    "LoadedModel", "load_model", "demo_model_dir", "Partition", "Piece", "register_model",
    "model_fingerprint", "checkpoint_digest",
    # profiling campaigns
    "CampaignReport", "TimingOptions", "QUICK_TIMING", "cut_model", "run_campaign",
    "profiled_precisions",
    # timing and the machine's stability
    "Timing", "time_interleaved", "time_one", "StabilityPolicy", "Verdict", "judge",
    "calibrate_cpu",
    # emulating precisions (for sensitivity)
    "Emulation", "emulation",
]
