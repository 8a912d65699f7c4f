"""Library errors. The CLI turns each into a one-line message and a non-zero exit."""

from __future__ import annotations


class HwcostError(Exception):
    """Base class of every error hwcost reports to users."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class SchemaTooNew(HwcostError):
    """The store was written by a newer hwcost than this one."""


class StoreError(HwcostError):
    """The store cannot be opened or used."""


class NoSuchDevice(HwcostError):
    """No device in the store or the catalog matches."""


class AmbiguousDevice(NoSuchDevice):
    """A device reference (a fingerprint prefix, a name) matches several stored devices."""


class NoSuchModel(HwcostError):
    """No model manifest in the store matches."""


class InvalidMeasurement(HwcostError):
    """A latency is NaN, infinite, negative or otherwise unusable."""


class UnknownPrecision(HwcostError):
    """A precision name is not in the registry."""


class BadShape(HwcostError):
    """A shape key cannot be parsed."""


class BundleInvalid(HwcostError):
    """An exchange bundle is corrupt, truncated, tampered with or of the wrong schema."""


class ReadOnlyViolation(HwcostError):
    """A query tried to write through a read-only interface."""


class QueryTimeout(HwcostError):
    """A ``db query`` ran past its time limit or was interrupted."""


class Infeasible(HwcostError):
    """No plan satisfies the constraints."""


class PartitionError(HwcostError):
    """A model cannot be cut into sequential subgraphs."""


class BackendUnavailable(HwcostError):
    """A backend cannot run on this machine."""


class NoEstimate(HwcostError):
    """No cost source can answer a query."""


class SensitivityError(HwcostError):
    """Sensitivity cannot be computed: bad calibration data, a loss that is not per-sample,
    a model without quantizable layers, or non-finite gradients."""


class NoSensitivityTable(SensitivityError):
    """No stored sensitivity table matches a model, method, checkpoint, quantizer and
    calibration set (the one wording: ``Store.sensitivity_table``)."""


class ModelLoadError(HwcostError):
    """A model spec (directory or package.module:factory) names nothing loadable."""


class UnknownLayer(HwcostError):
    """A layer name is not in the model, or names a layer that has no precision."""


class UnsupportedPrecision(HwcostError):
    """A device cannot run (and nobody measured) a precision."""


class BadConfig(HwcostError):
    """A config does not fit the subgraph it is asked for (wrong number of slots)."""


class PlanInvalid(HwcostError):
    """A plan document is not a valid hwcost plan."""


class DoesNotFit(HwcostError):
    """A model would not fit in the memory of the host or the device it is to run on."""


class BadWorkload(HwcostError):
    """A serving workload (prompt, gen, batch) spec or file is missing or invalid."""
