"""The block benchmark runs and reports every field (values are not judged here: no timing in tests)."""

from .scripts import run_json


def test_quick_run_reports_ratios_against_baselines() -> None:
    report = run_json("blocks.py", "--blocks", "mhsa,se", "--repeats", "1")
    assert report["machine"]["cores"] >= 1
    pairs = [(row["block"], row["baseline"]) for row in report["results"]]
    assert pairs == [("mhsa", "naive_attention"), ("mhsa", "sdpa_attention"), ("se", "conv3x3")]
    for row in report["results"]:
        assert row["fwd_bwd_ms"] > 0
        assert (
            abs(row["time_ratio"] - row["fwd_bwd_ms"] / row["baseline_fwd_bwd_ms"]) <= 0.05 * row["time_ratio"] + 0.01
        )
        assert row["peak_extra_mib"] >= 0
        assert row["fwd_ms"] > 0
        assert row["fwd_ratio"] > 0


def test_sasa_step_reports_ratios_against_the_conv_resnet() -> None:
    report = run_json("sasa_step.py")
    assert report["input"] == [2, 1, 8, 8]
    assert [row["network"] for row in report["rows"]] == ["sasa_resnet26", "sasa_resnet26_attnstem"]
    for row in report["rows"]:
        assert abs(row["ratio"] - row["step_ms"] / row["conv_step_ms"]) <= 0.05 * row["ratio"] + 0.01
