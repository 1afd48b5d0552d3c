"""The latency benchmark runs and reports every field (values are not judged here: no timing in tests)."""

from .scripts import run_json


def test_quick_run_reports_costs_and_ratios_to_resnet18() -> None:
    report = run_json("latency.py", "--studies", "graft", "--cells", "graph_head")
    assert [(row["study"], row["cell"]) for row in report["rows"]] == [("graft", "resnet18"), ("graft", "graph_head")]
    baseline, head = report["rows"]
    assert baseline["input"] == "1x28x28"
    assert baseline["ms_per_image_b1_vs_resnet18"] == 1.0
    assert 0 < head["params_m"] < baseline["params_m"]
    assert head["gflops_vs_resnet18"] == round(head["gflops"] / baseline["gflops"], 2)
    for row in report["rows"]:
        assert row["ms_per_image_b1"] > 0
        assert row["ms_per_image_b8"] > 0
        assert row["peak_mib_b8"] >= 0
