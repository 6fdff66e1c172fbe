"""tools/bench.py runs end to end in a second or two per measurement, so it never rots."""

import json

from helpers.processes import run_python


def test_bench_measures_every_variant_and_writes_results(tmp_path):
    result = run_python(
        "-m",
        "tools.bench",
        "--seconds", "0.3",
        "--rounds", "1",
        "--concurrency", "2",
        "--workloads", "get_account,transfer",
        "--idle-connections", "50",
        "--output", str(tmp_path / "results.json"),
        "--plot", str(tmp_path / "results.png"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "results.json").read_text())
    measured = {(run["variant"], run["workload"], run["note"]) for run in report["runs"]}
    for variant in ("project", "make_server", "per_request", "direct"):
        assert {(variant, "get_account", ""), (variant, "transfer", "")} <= measured
    assert all(run["calls_per_second"] > 0 and run["p99_ms"] >= run["p50_ms"] > 0 for run in report["runs"])
    for run in report["runs"]:  # the direct variant has no server
        assert (run["server_cpu_us_per_call"] is None) == (run["variant"] == "direct")
        assert run["server_cpu_us_per_call"] is None or run["server_cpu_us_per_call"] > 0
        assert run["machine_cpu_us_per_call"] >= (run["server_cpu_us_per_call"] or 0)
    versus_make_server = [ratio for ratio in report["ratios"] if ratio["comparison"] == "project / make_server"]
    assert versus_make_server and all(ratio["paired_cpu_ratio"] > 0 for ratio in versus_make_server)
    comparisons = {ratio["comparison"] for ratio in report["ratios"]}
    assert {
        "project / make_server",
        "project / per_request",
        "project / direct",
        "50 idle connections / no idle connections",
        "THRIFT_PROCESSES=2 / THRIFT_PROCESSES=1",
    } <= comparisons
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")
    assert "project / make_server" in result.stdout
