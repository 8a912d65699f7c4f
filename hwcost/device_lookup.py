"""Which device a ``--device`` reference names, and the peak rates the cost fallbacks use for it.

``hwcost.costs`` prices configs on the device resolved here; resolving once and passing the
:class:`~hwcost.store.DeviceRef` along keeps every step of a plan on the same device row.
"""

from __future__ import annotations

from hwcost.catalog import Peaks, find_catalog, load_catalog
from hwcost.errors import AmbiguousDevice, NoSuchDevice
from hwcost.precision import BASELINE, Precision
from hwcost.store import DeviceRef, Store

# Rough rates for a stored device that has measurements but neither a catalog entry nor a
# calibration: the fit to its measurements sets the real scale; only the ratios matter.
_NOMINAL_TFLOPS = {"cpu": {Precision.FP32: 0.1, Precision.BF16: 0.2, Precision.INT8: 0.4,
                           Precision.FP8_E4M3: 0.05},
                   "cuda": {Precision.FP32: 20.0, Precision.BF16: 300.0, Precision.FP8_E4M3: 600.0,
                            Precision.INT8: 600.0},
                   "hpu": {Precision.BF16: 400.0, Precision.FP8_E4M3: 800.0}}
_NOMINAL_GBPS = {"cpu": 20.0, "cuda": 2000.0, "hpu": 2400.0}



def stored_device(store: Store, ref: str | DeviceRef) -> DeviceRef | None:
    """The stored device ``ref`` names (fingerprint, prefix, name, or a kind with one local
    device), or None if the store has none; writes nothing."""
    try:
        return store.device(ref)
    except AmbiguousDevice:
        raise
    except NoSuchDevice:
        pass
    if ref in BASELINE:
        local = [d for d in store.devices() if d.kind == ref and d.source == "local"]
        if len(local) == 1:
            return store.device(local[0].fingerprint)
        if len(local) > 1:
            fps = ", ".join(d.fingerprint[:12] for d in local)
            raise AmbiguousDevice(f"several {ref} devices in the store ({fps}); pass --device "
                                  "with a fingerprint")
    return None


def resolve_device(store: Store, ref: str | DeviceRef) -> DeviceRef:
    """The device ``ref`` names, resolved once (pass the result along): stored (fingerprint,
    prefix, name), a kind with one local device, or a catalog device (created in the store on
    first use)."""
    found = stored_device(store, ref)
    if found is not None:
        return found
    entry = find_catalog(ref)
    if entry is not None:
        return store.put_catalog_device(entry)
    names = ", ".join(load_catalog())
    kind = ref if ref in ("cpu", "cuda", "hpu") else "KIND"
    raise NoSuchDevice(
        f"no device {ref!r} in the store or the catalog ({names}); on that machine run "
        f"`hwcost profile MODEL --device {kind} --shape SHAPE`"
        + (" (KIND: cpu, cuda or hpu)" if kind == "KIND" else "")
        + ", then `hwcost db export` there and `hwcost db import FILE` here")


def device_peaks(dev: DeviceRef) -> Peaks | None:
    """The device's own peaks (calibrated or catalog), else its product's catalog entry."""
    own = Peaks.from_json(dev.peaks)
    if own is not None:
        return own
    entry = find_catalog(dev.name)
    return entry.peaks if entry is not None else None


def nominal_peaks(kind: str) -> Peaks:
    """Rough peaks of a device ``kind`` with measurements but no catalog entry or calibration."""
    return Peaks(dict(_NOMINAL_TFLOPS.get(kind, _NOMINAL_TFLOPS["cpu"])),
                 _NOMINAL_GBPS.get(kind, 20.0), 5.0, "nominal (fitted to measurements)")


__all__ = ["resolve_device", "device_peaks", "nominal_peaks"]
