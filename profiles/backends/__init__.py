"""Backends: deploy each precision of the registry with real kernels on a device kind.

>>> from hwcost.profiles.backends import get_backend, apply_precisions
>>> cpu = get_backend("cpu")
>>> with deployed(model, {"layers.0.mlp.up_proj": "int8"}, cpu):   # in place, restored on exit
...     model(**inputs)
>>> view = apply_precisions(model, {"layers.0.mlp.up_proj": "int8"}, cpu)  # shares all other weights
"""

from hwcost.profiles.backends.base import (
    Backend,
    Deployment,
    already_deployed,
    apply_precisions,
    check_plan,
    deploy_layers,
    deployed,
    shallow_replace,
    swapped,
)
from hwcost.profiles.backends.cpu import CpuBackend
from hwcost.profiles.backends.cuda import CudaBackend
from hwcost.profiles.backends.hpu import HpuBackend
from hwcost.profiles.backends.layers import DeployedLinear, is_linear, linear_params
from hwcost.profiles.backends.registry import all_backends, backend_kinds, get_backend

__all__ = [
    # lookup
    "get_backend",
    "all_backends",
    "backend_kinds",
    # interface and registry entries
    "Backend",
    "Deployment",
    "CpuBackend",
    "CudaBackend",
    "HpuBackend",
    # deployment
    "deployed",
    "swapped",
    "deploy_layers",
    "check_plan",
    "already_deployed",
    "apply_precisions",
    "shallow_replace",
    "DeployedLinear",
    "is_linear",
    "linear_params",
]
