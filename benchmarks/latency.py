"""Parameters, FLOPs, CPU inference ms/image at batch 1 and 256, and peak memory of every study model.

Every cell of the packaged studies (``src/attngraft/configs/studies/``; quick profile by default, first dataset) is
built with random weights (latency does not depend on them) and measured in eval mode under
``torch.inference_mode``; each row also gives its ratios to ResNet-18 (the ``graft`` study's baseline) measured in
the same process. Peak memory is the growth of the resident set during one batch-256 forward, in a fresh process
per model.

    python benchmarks/latency.py [--json] [--quick] [--studies graft,vit,sasa] [--cells a,b]
                                [--profile quick|full]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import current_rss_mib, machine, peak_extra_mib_in_subprocess, peak_rss_mib, reset_peak_rss

from attngraft.data import get_dataset_spec
from attngraft.study import load_study
from attngraft.study.config import Cell
from attngraft.study.measure import median_ms, model_costs
from attngraft.train.network import build_network

BASELINE = ("graft", "resnet18")


def input_shape(cell: Cell) -> tuple[int, int, int]:
    """(C, H, W) of the cell's images: the dataset's shape, resized and replicated as its data settings say."""
    spec = get_dataset_spec(cell.data["dataset"])
    channels, height, _ = spec.image_shape or (len(spec.mean), 224, 224)
    side = cell.data.get("image_size") or height
    return cell.data.get("channels") or channels, side, side


def build(study: str, cell_name: str, profile: str) -> tuple[nn.Module, tuple[int, int, int]]:
    resolved = load_study(study, profile)
    cell = next(cell for cell in resolved.cells(resolved.datasets[0].name) if cell.name == cell_name)
    shape = input_shape(cell)
    spec = get_dataset_spec(cell.data["dataset"])
    network = build_network(cell.network, num_classes=spec.num_classes or 10, in_chans=shape[0])
    return network.eval(), shape


def memory_probe(study: str, cell: str, profile: str, batch: int) -> None:
    """Runs in a subprocess: prints the resident-set growth (MiB) of one forward of ``batch`` images."""
    network, shape = build(study, cell, profile)
    images = torch.randn(batch, *shape)
    with torch.inference_mode():
        network(images)  # steady state: kernels loaded, allocator warm
        reset_peak_rss()
        before = current_rss_mib()
        network(images)
    print(json.dumps(max(peak_rss_mib() - before, 0.0)))


def measure_one(study: str, cell: str, profile: str, batch_sizes: list[int], repeats: int) -> dict[str, object]:
    network, shape = build(study, cell, profile)
    row: dict[str, object] = {"study": study, "cell": cell, "input": "x".join(map(str, shape))}
    row.update({key: round(value, 4) for key, value in model_costs(network, shape).items()})
    with torch.inference_mode():
        for batch in batch_sizes:
            images = torch.randn(batch, *shape)
            row[f"ms_per_image_b{batch}"] = round(median_ms(lambda: network(images), repeats) / batch, 4)  # noqa: B023
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--quick", action="store_true", help="batch 1 and 8, one repeat (a smoke test)")
    parser.add_argument("--studies", default="graft,vit,sasa", help="comma-separated study names")
    parser.add_argument("--profile", default="quick", help="the studies' profile (input sizes follow it)")
    parser.add_argument("--cells", help="comma-separated cell names to keep (default: every cell)")
    parser.add_argument(
        "--memory-probe", nargs=4, metavar=("STUDY", "CELL", "PROFILE", "BATCH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.memory_probe:
        study, cell, profile, batch = args.memory_probe
        memory_probe(study, cell, profile, int(batch))
        return
    batch_sizes, repeats = ([1, 8], 1) if args.quick else ([1, 256], 5)
    script = Path(__file__).resolve()
    entries = [BASELINE]
    for study in args.studies.split(","):
        resolved = load_study(study, args.profile)
        cells = resolved.cells(resolved.datasets[0].name)
        entries += [(study, cell.name) for cell in cells if not args.cells or cell.name in args.cells.split(",")]
    rows = []
    for study, cell in dict.fromkeys(entries):
        row = measure_one(study, cell, args.profile, batch_sizes, repeats)
        probe = [study, cell, args.profile, str(batch_sizes[-1])]
        row[f"peak_mib_b{batch_sizes[-1]}"] = round(peak_extra_mib_in_subprocess(script, probe), 1)
        rows.append(row)
    baseline = rows[0]
    for row in rows:
        for key in ("gflops", *(f"ms_per_image_b{batch}" for batch in batch_sizes)):
            row[f"{key}_vs_resnet18"] = round(float(row[key]) / max(float(baseline[key]), 1e-12), 2)  # type: ignore[arg-type]
    if args.json:
        print(json.dumps({"machine": machine(), "profile": args.profile, "rows": rows}, indent=2))
        return
    columns = ["study", "cell", "input", "params_m", "gflops", *[f"ms_per_image_b{b}" for b in batch_sizes]]
    columns += [f"peak_mib_b{batch_sizes[-1]}", f"ms_per_image_b{batch_sizes[0]}_vs_resnet18"]
    print("  ".join(f"{column:>14}" for column in columns))
    for row in rows:
        print("  ".join(f"{row[column]!s:>14}" for column in columns))


if __name__ == "__main__":
    main()
