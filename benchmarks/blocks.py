"""Forward+backward time and peak memory of every attention block against a baseline in the same process.

Map blocks run at B=32, C=64, 32×32 (``local``: k=7, 8 heads) against a 3×3 convolution of the same channels;
token mixers at B=32, N=197, C=192 against a naive matmul-softmax-matmul attention with the same projections,
and ``mhsa`` also against the same projections around bare ``F.scaled_dot_product_attention``.
Peak memory is the growth of the resident set during one forward+backward, each in a fresh process.

    python benchmarks/blocks.py [--json] [--quick] [--blocks local,mhsa]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import (
    current_rss_mib,
    machine,
    paired_median_ms,
    peak_extra_mib_in_subprocess,
    peak_rss_mib,
    reset_peak_rss,
)

from attngraft.blocks import BLOCKS, create_block

MAP_SHAPE = {"batch": 32, "dim": 64, "size": 32}
TOKEN_SHAPE = {"batch": 32, "dim": 192, "tokens": 197}
QUICK_MAP_SHAPE = {"batch": 4, "dim": 32, "size": 16}
QUICK_TOKEN_SHAPE = {"batch": 4, "dim": 64, "tokens": 50}
OPTIONS = {"local": {"kernel_size": 7, "num_heads": 8}, "window": {"window_size": 8, "shift_size": 4}}
# Extra entries: a registered block with different options (here: local on its pure-PyTorch reference kernels).
VARIANTS = {"local+reference": ("local", {"backend": "reference"})}


def resolve(entry: str) -> tuple[str, dict[str, object]]:
    """The registered block name and extra options of a benchmark entry (a block name or a variant)."""
    return VARIANTS.get(entry, (entry, {}))


class AttentionBaseline(nn.Module):
    """The same projections as ``mhsa`` around a naive (matmul-softmax-matmul) or fused attention."""

    def __init__(self, dim: int, num_heads: int, fused: bool) -> None:
        super().__init__()
        self.num_heads, self.fused = num_heads, fused
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # (B, heads, N, head_dim)
        if self.fused:
            out = F.scaled_dot_product_attention(query, key, value)
        else:
            out = ((query @ key.transpose(-2, -1)) * query.shape[-1] ** -0.5).softmax(-1) @ value
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


def build(name: str, quick: bool) -> tuple[nn.Module, torch.Tensor]:
    """The module and input of one benchmark entry (a block name or a baseline name)."""
    map_shape, token_shape = (QUICK_MAP_SHAPE, QUICK_TOKEN_SHAPE) if quick else (MAP_SHAPE, TOKEN_SHAPE)
    torch.manual_seed(0)
    if name == "conv3x3":
        dim = map_shape["dim"]
        module: nn.Module = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        return module, torch.randn(map_shape["batch"], dim, map_shape["size"], map_shape["size"])
    if name in ("naive_attention", "sdpa_attention"):
        module = AttentionBaseline(token_shape["dim"], 8, fused=name == "sdpa_attention")
        return module, torch.randn(token_shape["batch"], token_shape["tokens"], token_shape["dim"])
    name, extra = resolve(name)
    layout = BLOCKS.get(name).layout
    shape = token_shape if layout == "tokens" else map_shape
    module = create_block(name, shape["dim"], **OPTIONS.get(name, {}), **extra)
    if layout == "tokens":
        return module, torch.randn(shape["batch"], shape["tokens"], shape["dim"])
    return module, torch.randn(shape["batch"], shape["dim"], shape["size"], shape["size"])


def forward_backward(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One training step's compute: forward, then backward of a random projection of the output."""
    x = x.requires_grad_()
    weight = torch.randn_like(module(x))

    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        (module(x) * weight).sum().backward()

    return step


def forward_only(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Inference: one forward in eval mode without gradients."""
    module.eval()
    x = x.detach()

    def step() -> None:
        with torch.inference_mode():
            module(x)

    return step


def baselines_for(name: str) -> list[str]:
    if BLOCKS.get(resolve(name)[0]).layout == "map":
        return ["conv3x3"]
    return ["naive_attention", "sdpa_attention"] if name == "mhsa" else ["naive_attention"]


def memory_probe(name: str, quick: bool) -> None:
    """Runs in a subprocess: prints the resident-set growth (MiB) of one forward+backward of ``name``."""
    module, x = build(name, quick)
    step = forward_backward(module, x)
    step()  # steady state: kernels loaded (and compiled, for compiled entries) before measuring
    reset_peak_rss()
    before = current_rss_mib()
    step()
    print(json.dumps(max(peak_rss_mib() - before, 0.0)))


def measure(names: list[str], quick: bool, repeats: int) -> list[dict[str, object]]:
    script = Path(__file__).resolve()
    memory: dict[str, float] = {}
    rows = []
    for name in names:
        for baseline in baselines_for(name):
            for entry in (name, baseline):
                if entry not in memory:
                    memory[entry] = peak_extra_mib_in_subprocess(script, [entry] + (["--quick"] if quick else []))
            block_ms, baseline_ms = paired_median_ms(
                forward_backward(*build(name, quick)), forward_backward(*build(baseline, quick)), repeats
            )
            forward_ms, baseline_forward_ms = paired_median_ms(
                forward_only(*build(name, quick)), forward_only(*build(baseline, quick)), repeats
            )
            rows.append(
                {
                    "block": name,
                    "baseline": baseline,
                    "fwd_bwd_ms": round(block_ms, 2),
                    "baseline_fwd_bwd_ms": round(baseline_ms, 2),
                    "time_ratio": round(block_ms / baseline_ms, 2),
                    "fwd_ms": round(forward_ms, 2),
                    "baseline_fwd_ms": round(baseline_forward_ms, 2),
                    "fwd_ratio": round(forward_ms / baseline_forward_ms, 2),
                    "peak_extra_mib": round(memory[name], 1),
                    "baseline_peak_extra_mib": round(memory[baseline], 1),
                    "memory_ratio": round(memory[name] / max(memory[baseline], 1e-3), 2),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke run, not a measurement)")
    parser.add_argument("--blocks", default=",".join([*BLOCKS.names(), *VARIANTS]), help="comma-separated block names")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-probe", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe, args.quick)
        return
    rows = measure(args.blocks.split(","), args.quick, args.repeats)
    if args.json:
        print(json.dumps({"machine": machine(), "quick": args.quick, "results": rows}, indent=2))
        return
    print(f"machine: {machine()}")
    header = f"{'block':<16}{'baseline':<17}{'ms':>9}{'base ms':>9}{'x time':>8}{'x fwd':>7}{'MiB':>9}{'base MiB':>9}"
    print(header + f"{'x mem':>8}")
    for row in rows:
        print(
            f"{row['block']:<16}{row['baseline']:<17}{row['fwd_bwd_ms']:>9}{row['baseline_fwd_bwd_ms']:>9}"
            f"{row['time_ratio']:>8}{row['fwd_ratio']:>7}{row['peak_extra_mib']:>9}{row['baseline_peak_extra_mib']:>9}"
            f"{row['memory_ratio']:>8}"
        )


if __name__ == "__main__":
    main()
