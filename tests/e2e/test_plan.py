"""`duet plan` through its CLI (--json): synthetic profiles whose optimum is
known, --compare on a sweep CSV, and bad input. The model itself is
unit-tested in tests/unit/test_plan.c."""
import json
import subprocess

import pytest


def profile(tmp_path, ms_per_tok=1.0, a=10.0, b=0.1, **extra):
    p = {"format": "duet-profile-1",
         "prefill": [{"tokens": t, "ms": t * ms_per_tok} for t in (16, 64, 256, 1024, 4096)],
         "decode": [{"batch": x, "step_ms": a + b * x} for x in (1, 2, 4, 8, 16, 32, 64, 128)],
         "max_batch": 256, **extra}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(p))
    return str(path)


def plan(duet_bin, *args):
    p = subprocess.run([duet_bin, "plan", *args], capture_output=True, text=True, timeout=60)
    for mark in ("runtime error:", "AddressSanitizer", "LeakSanitizer"):
        assert mark not in p.stderr, p.stderr
    return p


def best_split(res):
    return next(c for c in res["configs"] if c["mode"] == "disaggregated")


def test_prefill_bound(duet_bin, tmp_path):
    p = plan(duet_bin, "--profile", profile(tmp_path), "--rate", "1.5", "--input-len", "1000",
             "--output-len", "4", "--goodput", "ttft:5000 tpot:100", "--budget", "4", "--tp",
             "1", "--top", "100", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    b = best_split(res)
    assert (b["n_prefill"], b["n_decode"]) == (3, 1)
    assert res["recommended"]["goodput"] == pytest.approx(1.5, rel=0.02)
    assert len(res["configs"]) == 10


def test_decode_bound(duet_bin, tmp_path):
    p = plan(duet_bin, "--profile", profile(tmp_path, b=1.0), "--rate", "4", "--input-len", "16",
             "--output-len", "200", "--goodput", "ttft:1000 tpot:20", "--budget", "4", "--tp",
             "1", "--top", "100", "--json")
    assert p.returncode == 0, p.stderr
    b = best_split(json.loads(p.stdout))
    assert (b["n_prefill"], b["n_decode"]) == (1, 3)


def test_interference_prefers_disaggregation(duet_bin, tmp_path):
    p = plan(duet_bin, "--profile", profile(tmp_path), "--rate", "0.8", "--input-len", "1000",
             "--output-len", "100", "--goodput", "ttft:5000 tpot:12", "--budget", "4", "--tp",
             "1", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["recommended"]["mode"] == "disaggregated"


def test_tp_filtered_by_kv_heads(duet_bin, tmp_path):
    p = plan(duet_bin, "--profile", profile(tmp_path, n_kv_heads=3), "--rate", "1",
             "--goodput", "ttft:5000", "--budget", "6", "--tp", "1,2,3", "--top", "1000",
             "--json")
    assert p.returncode == 0, p.stderr
    cfgs = json.loads(p.stdout)["configs"]
    assert all(c["tp_prefill"] in (1, 3) and c["tp_decode"] in (1, 3) for c in cfgs)
    assert any(c["tp_decode"] == 3 for c in cfgs)


def test_compare(duet_bin, tmp_path):
    csv = tmp_path / "sweep.csv"
    csv.write_text(
        "config,mode,n_prefill,tp_prefill,n_decode,tp_decode,workers,rate,request_throughput,"
        "request_goodput,p99_ttft_ms,mean_tpot_ms,status\n"
        "colocated x2,colocated,1,2,0,2,2,0.5,0.5,0.4,900,30,ok\n"
        "1P:1D tp1,disaggregated,1,1,1,1,2,0.5,0.5,0.5,800,20,ok\n")
    p = plan(duet_bin, "--profile", profile(tmp_path), "--rate", "0.5", "--input-len", "64",
             "--output-len", "16", "--goodput", "ttft:2000 tpot:100", "--compare", str(csv),
             "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    rows = res["compare"]
    assert [r["config"] for r in rows] == ["colocated 1x tp2", "1P:1D tp1/tp1"]
    assert rows[0]["measured_attainment"] == pytest.approx(0.8)
    assert rows[1]["measured_goodput"] == pytest.approx(0.5)
    assert rows[1]["goodput_rel_error"] == pytest.approx(rows[1]["goodput"] / 0.5 - 1)
    assert res["compare_best_measured"] == "1P:1D tp1/tp1"
    # human form
    p = plan(duet_bin, "--profile", profile(tmp_path), "--rate", "0.5", "--goodput",
             "ttft:2000 tpot:100", "--compare", str(csv))
    assert p.returncode == 0 and "mean |goodput error|" in p.stdout and "recommended:" in p.stdout


@pytest.mark.parametrize("args,msg", [
    ([], "--profile FILE is required"),
    (["--profile", "PROFILE"], "--goodput"),
    (["--profile", "PROFILE", "--goodput", "e2el:100"], "ttft and tpot only"),
    (["--profile", "PROFILE", "--goodput", "ttft:1", "--tp", "0"], "--tp '0'"),
    (["--profile", "/nonexistent.json", "--goodput", "ttft:1"], "/nonexistent.json"),
    (["--profile", "BAD", "--goodput", "ttft:1"], "'decode' must be a non-empty array"),
    (["--profile", "PROFILE", "--goodput", "ttft:1", "--compare", "/nonexistent.csv"],
     "/nonexistent.csv"),
    (["--profile", "PROFILE", "--goodput", "ttft:1", "--compare", "BADCSV"], "no column"),
    (["--profile", "PROFILE", "--goodput", "ttft:1", "--rate", "0"], "--rate"),
])
def test_bad_input(duet_bin, tmp_path, args, msg):
    good = profile(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"prefill": [{"tokens": 16, "ms": 1}]}')
    badcsv = tmp_path / "bad.csv"
    badcsv.write_text("a,b\n1,2\n")
    args = [{"PROFILE": good, "BAD": str(bad), "BADCSV": str(badcsv)}.get(x, x) for x in args]
    p = plan(duet_bin, *args)
    assert p.returncode in (1, 2), p
    assert msg in p.stderr, p.stderr
