"""Workload specs and files, and the decode interpolation over KV buckets."""

from __future__ import annotations

import json

import pytest

from hwcost.errors import BadWorkload
from hwcost.workload import (
    Request,
    decode_weights,
    interpolate,
    interpolation_error,
    kv_buckets,
    parse_workload,
    workload_shapes,
)


def test_a_request_spec_round_trips_and_names_its_shapes():
    wl = parse_workload("prompt=1024,gen=200,batch=8")
    assert wl.requests == (Request(1024, 200, 8),)
    assert wl.shape_key == "workload:prompt=1024,gen=200,batch=8"
    assert parse_workload(wl.shape_key) == wl
    (r,) = wl.requests
    assert r.prefill.key == "batch=8,seq=1024,phase=prefill"
    assert list(r.decode_kvs)[:2] == [1024, 1025] and len(r.decode_kvs) == 199
    assert kv_buckets(r) == (1024, 1123, 1222)
    two = parse_workload("prompt=8,gen=2,batch=1;prompt=16,gen=4,batch=2,weight=3")
    assert parse_workload(two.shape_key) == two and two.total_weight == 4


def test_files_json_and_csv(tmp_path):
    j = tmp_path / "w.json"
    j.write_text(json.dumps({"requests": [{"prompt": 128, "gen": 32, "batch": 4, "weight": 2},
                                          {"prompt": 512, "gen": 8, "batch": 1}]}))
    c = tmp_path / "w.csv"
    c.write_text("prompt,gen,batch,weight\n128,32,4,2\n512,8,1,\n")
    assert parse_workload(str(j)) == parse_workload(str(c))
    assert parse_workload(str(j)).requests[0] == Request(128, 32, 4, 2.0)


@pytest.mark.parametrize("content, suffix, message", [
    ('[{"prompt": 128, "batch": 4}]', ".json", "request 1: missing field 'gen'"),
    ('[{"prompt": -5, "gen": 3, "batch": 4}]', ".json",
     "request 1: field 'prompt' must be a positive integer; got -5"),
    ("prompt,gen,batch\n128,32,4\n64,,1\n", ".csv", "line 3: missing field 'gen'"),
    ("prompt,gen,batch\n128,32,-1\n", ".csv", "field 'batch' must be a positive integer"),
    ('[{"prompt": 1, "gen": 1, "batch": 1, "weight": -2}]', ".json", "'weight' must be positive"),
    ("{", ".json", "is not valid JSON"),
    ("[]", ".json", "has no requests"),
    ('[{"prompt": 1, "gen": 1, "batch": 1, "tokens": 3}]', ".json", "unknown field 'tokens'"),
])
def test_bad_workload_files_are_one_line(tmp_path, content, suffix, message):
    p = tmp_path / f"w{suffix}"
    p.write_text(content)
    with pytest.raises(BadWorkload, match=message) as err:
        parse_workload(str(p))
    assert "\n" not in str(err.value)


def test_bad_specs():
    with pytest.raises(BadWorkload, match="missing field 'batch'"):
        parse_workload("prompt=8,gen=2")
    with pytest.raises(BadWorkload, match="neither prompt=P,gen=G,batch=B nor a file"):
        parse_workload("no-such-file.json")
    with pytest.raises(BadWorkload, match="'gen' must be a positive integer; got '0'"):
        parse_workload("prompt=8,gen=0,batch=1")


def test_interpolation_is_exact_on_linear_tables_and_reports_curvature():
    def linear(kv):
        return 100.0 + 0.25 * kv

    r = Request(prompt=100, gen=61, batch=2)
    buckets = kv_buckets(r)
    assert buckets == (100, 130, 159)
    w = decode_weights(r.decode_kvs, buckets)
    assert sum(w.values()) == pytest.approx(60)  # one weight per decode step
    assert sum(wt * linear(b) for b, wt in w.items()) == pytest.approx(
        sum(linear(k) for k in r.decode_kvs))
    assert interpolation_error({b: linear(b) for b in buckets}) == pytest.approx(0, abs=1e-12)

    def convex(kv):
        return 100.0 + 0.002 * kv * kv

    costs = {b: convex(b) for b in buckets}
    err = interpolation_error(costs)
    assert 0 < err < 0.1
    true = sum(convex(k) for k in r.decode_kvs)
    approx = sum(interpolate(costs, k) for k in r.decode_kvs)
    assert approx >= true and approx / true - 1 < err  # chords lie above a convex curve
    assert interpolate(costs, 130) == pytest.approx(convex(130))
    assert interpolate({100: 5.0}, 150) == 5.0  # one bucket: every step costs the same


def test_workload_shapes_weigh_prefill_and_decode_per_request():
    wl = parse_workload("prompt=16,gen=9,batch=1;prompt=16,gen=1,batch=1,weight=3")
    shapes = workload_shapes(wl)
    assert shapes["batch=1,seq=16,phase=prefill"] == pytest.approx(1.0)  # both requests prefill
    decode = {k: v for k, v in shapes.items() if "decode" in k}
    assert set(decode) == {"batch=1,kv=16,phase=decode", "batch=1,kv=20,phase=decode",
                           "batch=1,kv=23,phase=decode"}
    assert sum(decode.values()) == pytest.approx(8 / 4)  # 8 steps, a quarter of the weight
