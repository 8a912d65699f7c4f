"""The device catalog: every figure has a source; names resolve; the data folder moves."""

from __future__ import annotations

import json

import pytest

from hwcost.catalog import RATE_ALIASES, Peaks, data_dir, find_catalog, load_catalog
from hwcost.errors import NoSuchDevice
from hwcost.precision import BASELINE, CANDIDATES, Precision
from hwcost.store import open_store

EXPECTED = {"H100-SXM", "H100-PCIe", "H200", "A100", "Gaudi2", "Gaudi3"}


def test_catalog_lists_the_devices_with_a_source_for_every_figure():
    cat = load_catalog()
    assert set(cat) == EXPECTED
    raw = json.loads((data_dir() / "devices.json").read_text())["devices"]
    for name, entry in cat.items():
        assert entry.kind in BASELINE
        assert entry.peaks.mem_gbps > 0
        assert entry.peaks.rate(BASELINE[entry.kind]) > 0, name
        for key in raw[name]["peaks"]:
            assert raw[name]["sources"].get(key), f"{name}.{key} has no source"


def test_dense_rates_are_ordered_as_the_datasheets_say():
    cat = load_catalog()
    h100, pcie, h200 = cat["H100-SXM"].peaks, cat["H100-PCIe"].peaks, cat["H200"].peaks
    assert h100.rate(Precision.FP8_E4M3) == pytest.approx(2 * h100.rate(Precision.BF16), rel=1e-3)
    assert pcie.rate(Precision.BF16) < h100.rate(Precision.BF16)
    assert h200.rate(Precision.BF16) == h100.rate(Precision.BF16)  # same die, more memory
    assert h200.mem_gbps > h100.mem_gbps > pcie.mem_gbps
    g3 = cat["Gaudi3"].peaks
    assert g3.rate(Precision.FP8_E4M3) == g3.rate(Precision.BF16)  # Gaudi 3: same peak
    assert cat["A100"].peaks.rate(Precision.FP8_E4M3) is None  # Ampere has no FP8
    for p, alias in RATE_ALIASES.items():
        assert h100.rate(p) == h100.rate(alias)


def test_every_candidate_of_a_catalog_kind_is_rated_except_a100_fp8():
    for name, entry in load_catalog().items():
        missing = {p for p in CANDIDATES[entry.kind] if entry.peaks.rate(p) is None}
        assert missing == ({Precision.FP8_E4M3} if name == "A100" else set()), name


@pytest.mark.parametrize("ref,name", [("H100-SXM", "H100-SXM"), ("h100 sxm", "H100-SXM"),
                                      ("NVIDIA H100 80GB HBM3", "H100-SXM"),
                                      ("Gaudi 2", "Gaudi2"), ("GAUDI3", "Gaudi3"),
                                      ("h100_pcie", "H100-PCIe"), ("a100", "A100")])
def test_names_aliases_and_products_resolve(ref, name):
    assert find_catalog(ref).name == name


@pytest.mark.parametrize("ref", ["", "MI300X", "cpu", "H100-SXM-9000"])
def test_unknown_names_do_not_resolve(ref):
    assert find_catalog(ref) is None


def test_peaks_round_trip_through_the_device_json():
    p = load_catalog()["Gaudi2"].peaks
    back = Peaks.from_json(json.loads(json.dumps(p.to_json())))
    assert back == p
    assert Peaks.from_json({}) is None
    assert Peaks.from_json({"bf16_tflops": 1.0}) is None  # no bandwidth: no roofline


def test_hwcost_data_moves_the_catalog(tmp_path, monkeypatch):
    (tmp_path / "devices.json").write_text(json.dumps({"version": 1, "devices": {"X1": {
        "kind": "cuda", "product": "Example X1", "aliases": ["ex one"],
        "peaks": {"bf16_tflops": 100.0, "mem_gbps": 1000.0}, "sources": {}}}}))
    monkeypatch.setenv("HWCOST_DATA", str(tmp_path))
    assert set(load_catalog()) == {"X1"}
    assert find_catalog("EX-ONE").peaks.rate(Precision.FP16) == 100.0
    monkeypatch.setenv("HWCOST_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(NoSuchDevice, match="device catalog .* is missing; set \\$HWCOST_DATA"):
        load_catalog()


def test_catalog_fingerprint_is_stable_and_distinct(sqlite_url):
    cat = load_catalog()
    fps = {e.fingerprint for e in cat.values()}
    assert len(fps) == len(cat)
    assert cat["H100-SXM"].fingerprint == load_catalog()["H100-SXM"].fingerprint
    with open_store(sqlite_url) as store:
        ref = store.put_catalog_device(cat["H100-SXM"])
    assert ref.source == "catalog" and ref.kind == "cuda"
    assert ref.software == {"catalog": cat["H100-SXM"].product} and ref.threads is None
