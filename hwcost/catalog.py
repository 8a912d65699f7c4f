"""The device catalog: published peak matrix rates and memory bandwidth per device.

Lives in ``data/devices.json`` (``$HWCOST_DATA`` overrides the data folder). A catalog device
becomes a store row (``source="catalog"``) the first time a query names it, so the planner
can answer for hardware nobody here has, from the datasheet alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from hwcost.errors import NoSuchDevice
from hwcost.precision import Precision

DATA_ENV = "HWCOST_DATA"

# A precision without its own figure runs at a sibling's rate (same datapath on every device
# in the catalog): fp16 at bf16, e5m2 at e4m3.
RATE_ALIASES = {Precision.FP16: Precision.BF16, Precision.FP8_E5M2: Precision.FP8_E4M3,
                # weight-only formats compute in bf16; they only read fewer weight bytes
                Precision.INT8_WO: Precision.BF16, Precision.INT4_WO: Precision.BF16,
                Precision.FP8_WO: Precision.BF16}


def data_dir() -> Path:
    """The data folder (device catalog, demo model, demo corpus): ``$HWCOST_DATA``, else
    ``data/`` of the source checkout the package runs from, else the copy an installed wheel
    puts in ``<prefix>/share/hwcost/data`` (``[tool.setuptools.data-files]``)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1] / "data"
    if (checkout / "devices.json").is_file():
        return checkout
    import site
    import sys

    for prefix in (sys.prefix, site.getuserbase(), sys.base_prefix):
        installed = Path(prefix) / "share" / "hwcost" / "data"
        if (installed / "devices.json").is_file():
            return installed
    return checkout


@dataclass(frozen=True)
class Peaks:
    """Peak (or calibrated) rates of one device.

    ``tflops`` maps a precision to its dense matrix rate in TFLOP/s (TOPS for integers);
    ``mem_gbps`` is memory bandwidth in GB/s; ``op_overhead_us`` the per-kernel cost the
    roofline adds for each op until measurements refine it. ``achieved`` marks rates measured
    on the device (``hwcost device calibrate``) rather than datasheet peaks: the roofline then
    expects its kernels to run at those rates, not at a fraction of them.
    """

    tflops: dict[Precision, float]
    mem_gbps: float
    op_overhead_us: float = 5.0
    source: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    achieved: bool = False

    def rate(self, p: Precision) -> float | None:
        """TFLOP/s for precision ``p`` (through RATE_ALIASES), or None when not known."""
        if p in self.tflops:
            return self.tflops[p]
        alias = RATE_ALIASES.get(p)
        return self.tflops.get(alias) if alias is not None else None

    def supported(self) -> tuple[Precision, ...]:
        """Precisions with a known rate, in registry order."""
        return tuple(p for p in Precision if self.rate(p) is not None)

    def to_json(self) -> dict:
        """The ``Device.peaks`` form: ``{"<precision>_tflops": x, "mem_gbps": y, ...}``."""
        out: dict = {f"{p.value}_tflops": v for p, v in self.tflops.items()}
        out.update(mem_gbps=self.mem_gbps, op_overhead_us=self.op_overhead_us, source=self.source)
        if self.achieved:
            out["achieved"] = True
        if self.sources:
            out["sources"] = self.sources
        return out

    @classmethod
    def from_json(cls, d: dict) -> Peaks | None:
        """Parse ``Device.peaks``; None when it holds no bandwidth or no rate."""
        rates = {}
        for p in Precision:
            v = d.get(f"{p.value}_tflops")
            if isinstance(v, (int, float)) and v > 0:
                rates[p] = float(v)
        bw = d.get("mem_gbps")
        if not rates or not isinstance(bw, (int, float)) or bw <= 0:
            return None
        return cls(rates, float(bw), float(d.get("op_overhead_us", 5.0)), str(d.get("source", "")),
                   dict(d.get("sources", {})), bool(d.get("achieved", False)))


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog device."""

    name: str
    kind: str
    product: str
    aliases: tuple[str, ...]
    peaks: Peaks
    fp8_e4m3_max: float = 448.0
    """Largest finite fp8 e4m3 value of the device's FP8 unit (240 on Gaudi 2)."""

    @property
    def fingerprint(self) -> str:
        """Stable fingerprint of the catalog row (a datasheet has no software stack)."""
        return "cat" + hashlib.sha256(f"catalog:{self.name}".encode()).hexdigest()[:13]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_catalog(path: Path | None = None) -> dict[str, CatalogEntry]:
    """Every catalog device by canonical name."""
    path = path or data_dir() / "devices.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise NoSuchDevice(f"device catalog {path} is missing; set ${DATA_ENV} to the data folder"
                           ) from None
    out = {}
    for name, d in raw["devices"].items():
        peaks = Peaks.from_json({**d["peaks"], "op_overhead_us": d.get("op_overhead_us", 5.0),
                                 "source": f"catalog: {d['product']}",
                                 "sources": d.get("sources", {})})
        out[name] = CatalogEntry(name, d["kind"], d["product"], tuple(d.get("aliases", ())), peaks,
                                 float(d.get("fp8_e4m3_max", 448.0)))
    return out


def fp8_e4m3_max(device_name: str, kind: str = "") -> float:
    """The fp8 e4m3 range of a device by name (catalog name, alias or product, e.g. the name
    ``habana_frameworks`` reports, ``GAUDI2``). An unknown Gaudi (``kind`` hpu) gets Gaudi 2's
    240, the range both generations can hold; anything else the OCP format's 448."""
    entry = find_catalog(device_name) if device_name else None
    if entry is not None:
        return entry.fp8_e4m3_max
    return 240.0 if kind == "hpu" else 448.0


def find_catalog(ref: str, catalog: dict[str, CatalogEntry] | None = None) -> CatalogEntry | None:
    """The catalog entry named ``ref`` (canonical name, alias or product; case, spaces and
    dashes ignored), or None."""
    catalog = catalog if catalog is not None else load_catalog()
    key = _norm(ref)
    if not key:
        return None
    for e in catalog.values():
        if key in {_norm(n) for n in (e.name, e.product, *e.aliases)}:
            return e
    return None
