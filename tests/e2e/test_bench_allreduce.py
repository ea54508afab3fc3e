"""duet bench allreduce: the JSON report has every field, for every rank
count and size, next to a memcpy figure from the same run; bad flags are
usage errors. Figures are not judged here (see docs/parallel.md)."""
import json

from conftest import run_duet


def test_json_report(duet_bin):
    r = run_duet(duet_bin, "bench", "allreduce", "--min-ranks", "2", "--max-ranks", "3",
                 "--min-bytes", "4096", "--max-bytes", "65536", "--time", "0.01", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["bench"] == "allreduce" and d["dtype"] == "f32" and d["staged"] is False
    rows = d["results"]
    assert [(x["ranks"], x["bytes"]) for x in rows] == [
        (n, b) for n in (2, 3) for b in (4096, 16384, 65536)]
    for x in rows:
        for k in ("iters", "lat_us", "cpu_us", "algbw_gbps", "busbw_gbps", "memcpy_gbps", "ratio"):
            assert x[k] > 0, (k, x)
        assert abs(x["ratio"] - x["algbw_gbps"] / x["memcpy_gbps"]) < 0.01
        # informational cross-core reference: 0 only with a single usable CPU
        assert x["xcore_memcpy_gbps"] >= 0
        if x["xcore_memcpy_gbps"] > 0:
            assert abs(x["xcore_ratio"] - x["algbw_gbps"] / x["xcore_memcpy_gbps"]) < 0.01
    assert d["consume"] is False and d["produce"] is False
    assert "another CPU" in d["xcore_memcpy"]


def test_staged_half(duet_bin):
    r = run_duet(duet_bin, "bench", "allreduce", "--max-ranks", "2", "--min-bytes", "1024",
                 "--max-bytes", "1024", "--time", "0.01", "--dtype", "bf16", "--staged", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["staged"] is True and d["dtype"] == "bf16" and len(d["results"]) == 1
    assert d["in_place"] is False


def test_staged_in_place(duet_bin):
    # the forward pass's large-step path: summed in place in the group's buffer
    r = run_duet(duet_bin, "bench", "allreduce", "--max-ranks", "2", "--min-bytes", "65536",
                 "--max-bytes", "262144", "--slot", "262144", "--time", "0.01", "--staged",
                 "--in-place", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["staged"] is True and d["in_place"] is True and len(d["results"]) == 2
    assert all(x["lat_us"] > 0 for x in d["results"])


def test_produce_consume(duet_bin):
    # every rank writes its input before and copies the result out after each
    # call (both counted in lat_us), as a forward pass would
    r = run_duet(duet_bin, "bench", "allreduce", "--max-ranks", "2", "--min-bytes", "65536",
                 "--max-bytes", "65536", "--slot", "262144", "--time", "0.01", "--staged",
                 "--in-place", "--produce", "--consume", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["consume"] is True and d["produce"] is True and len(d["results"]) == 1
    assert d["results"][0]["lat_us"] > 0


def test_bad_flags(duet_bin):
    r = run_duet(duet_bin, "bench", "allreduce", "--dtype", "f64")
    assert r.returncode == 2 and "unknown --dtype" in r.stderr
    r = run_duet(duet_bin, "bench", "allreduce", "--min-ranks", "4", "--max-ranks", "2")
    assert r.returncode == 2
    r = run_duet(duet_bin, "bench", "allreduce", "--slot", "100")
    assert r.returncode == 2
