"""The k×k attention kernels: every backend against the plain-autograd reference, gradients against numerical ones,
the compiled kernel's build, cache and fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attngraft.blocks import kernels
from attngraft.blocks.kernels import native, reference

BACKENDS_HERE = ["native", "reference"] if native.available() else ["reference"]
needs_native = pytest.mark.skipif(not native.available(), reason="no C++ compiler: the compiled kernel is not built")

# (batch, heads, query dim, value dim, height, width, k, embeddings, offset bias). Widths cover a partial last tile
# and several tiles (a tile holds 4 to 16 pixels); k larger than the image; k = 1.
CASES = [
    (2, 2, 4, 4, 5, 7, 3, True, True),
    (1, 3, 2, 8, 9, 20, 5, False, True),
    (2, 2, 6, 6, 17, 33, 7, True, False),
    (1, 1, 4, 4, 2, 3, 7, True, True),
    (2, 2, 8, 8, 4, 4, 1, True, True),
    (1, 2, 10, 12, 3, 18, 9, True, False),
]


def make_inputs(case: tuple, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor | None]:
    batch, heads, query_dim, value_dim, height, width, kernel_size, embeddings, offset = case
    torch.manual_seed(0)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64).to(dtype).requires_grad_()  # the same values in any dtype

    return {
        "query": leaf(batch, heads, query_dim, height, width),
        "key": leaf(batch, heads, query_dim, height, width),
        "value": leaf(batch, heads, value_dim, height, width),
        "row_embedding": leaf(heads, kernel_size, query_dim // 2) if embeddings else None,
        "col_embedding": leaf(heads, kernel_size, query_dim - query_dim // 2) if embeddings else None,
        "offset_bias": leaf(heads, kernel_size**2) if offset else None,
    }


def outputs_and_gradients(function, inputs: dict[str, torch.Tensor | None], kernel_size: int) -> list[torch.Tensor]:
    leaves = [tensor for tensor in inputs.values() if tensor is not None]
    out = function(**inputs, kernel_size=kernel_size)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return [out, *torch.autograd.grad((out * weights).sum(), leaves)]


def plain(kernel_size: int, **inputs: torch.Tensor | None) -> torch.Tensor:
    query, key, value = inputs.pop("query"), inputs.pop("key"), inputs.pop("value")
    return reference.neighbourhood_attention_reference(query, key, value, kernel_size, **inputs)[0]


def with_backend(backend: str):
    def attend(kernel_size: int, **inputs: torch.Tensor | None) -> torch.Tensor:
        query, key, value = inputs.pop("query"), inputs.pop("key"), inputs.pop("value")
        return kernels.neighbourhood_attention(query, key, value, kernel_size, backend=backend, **inputs)

    return attend


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("case", CASES, ids=lambda case: "x".join(map(str, case[:7])))
def test_backends_equal_the_plain_reference_in_float64(backend: str, case: tuple) -> None:
    expected = outputs_and_gradients(plain, make_inputs(case), case[6])
    result = outputs_and_gradients(with_backend(backend), make_inputs(case), case[6])
    for got, want in zip(result, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@needs_native
@pytest.mark.parametrize("case", CASES, ids=lambda case: "x".join(map(str, case[:7])))
def test_native_float32_is_within_rounding_of_float64(case: tuple) -> None:
    expected = outputs_and_gradients(plain, make_inputs(case), case[6])
    result = outputs_and_gradients(with_backend("native"), make_inputs(case, torch.float32), case[6])
    for got, want in zip(result, expected, strict=True):
        torch.testing.assert_close(got.double(), want, atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_gradients_match_numerical_ones(backend: str) -> None:
    case = (2, 2, 4, 4, 4, 5, 3, True, True)
    inputs = make_inputs(case)
    names = [name for name, tensor in inputs.items() if tensor is not None]

    def attend(*tensors: torch.Tensor) -> torch.Tensor:
        return with_backend(backend)(3, **dict(zip(names, tensors, strict=True)))

    assert torch.autograd.gradcheck(attend, tuple(inputs[name] for name in names))


@needs_native
def test_packed_projection_equals_separate_query_key_value() -> None:
    case = (2, 3, 8, 8, 6, 21, 5, True, False)
    inputs = make_inputs(case)
    expected = outputs_and_gradients(plain, inputs, 5)
    qkv = torch.stack([inputs["query"], inputs["key"], inputs["value"]], 1).detach().requires_grad_()
    embeddings = {name: inputs[name] for name in ("row_embedding", "col_embedding")}
    out = kernels.packed_neighbourhood_attention(qkv, 5, backend="native", **embeddings)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    grads = torch.autograd.grad((out * weights).sum(), [qkv, *embeddings.values()])
    torch.testing.assert_close(out, expected[0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grads[0].unbind(1), tuple(expected[1:4]), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grads[1:], tuple(expected[4:]), atol=1e-12, rtol=1e-10)


@needs_native
def test_strided_and_bf16_inputs() -> None:
    """Views that are not contiguous are read as they are or copied; bf16 computes in float32 and comes back bf16."""
    torch.manual_seed(0)
    big = torch.randn(2, 2, 6, 5, 9)
    query, key, value = big[:, :, :4], big[:, :, 1:5], big[:, :, 2:6].transpose(-1, -2).contiguous().transpose(-1, -2)
    out = kernels.neighbourhood_attention(query, key, value, 3, backend="native")
    torch.testing.assert_close(out, plain(3, query=query, key=key, value=value), atol=1e-5, rtol=1e-4)
    half = kernels.neighbourhood_attention(query.bfloat16(), key.bfloat16(), value.bfloat16(), 3, backend="native")
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), out, atol=5e-2, rtol=5e-2)


def test_meta_tensors_take_the_plain_path() -> None:
    inputs = {name: torch.empty(2, 2, 4, 5, 6, device="meta") for name in ("query", "key", "value")}
    assert kernels.neighbourhood_attention(**inputs, kernel_size=3).shape == (2, 2, 4, 5, 6)


def test_use_backend_forces_a_backend_for_the_block_of_code_only() -> None:
    device = torch.device("cpu")
    automatic = kernels.choose_backend(device)
    with kernels.use_backend("reference"):
        assert kernels.choose_backend(device, preferred="native") == "reference"
    assert kernels.choose_backend(device) == automatic
    with pytest.raises(
        ValueError, match=r"backend 'fast' is not valid; choose one of \['native', 'reference', 'flex'\]"
    ):
        kernels.use_backend("fast").__enter__()


@needs_native
def test_the_kernel_refuses_an_even_window_naming_it() -> None:
    from attngraft.blocks.kernels import cpu  # noqa: F401  (registers the operator)

    tensor = torch.randn(1, 1, 2, 4, 4)
    with pytest.raises(ValueError, match="kernel size is not odd"):
        torch.ops.attngraft.neighbourhood_attention(tensor, tensor, tensor, None, None, None, 4)


def test_no_compiler_falls_back_to_pure_pytorch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(native, "compiler", lambda: None)
    native.library.cache_clear()
    try:
        assert native.library() is None
        assert "falls back to the pure-PyTorch kernels (slower): no C++ compiler found" in caplog.text
        assert kernels.choose_backend(torch.device("cpu")) == "reference"
    finally:
        monkeypatch.undo()
        native.library.cache_clear()


def test_disabling_the_compiled_kernel_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.DISABLE_VARIABLE, "0")
    native.library.cache_clear()
    try:
        assert not native.available()
    finally:
        monkeypatch.undo()
        native.library.cache_clear()


@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")
def test_build_caches_by_source_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNGRAFT_KERNEL_CACHE", str(tmp_path))
    path = native.build()
    assert path.parent == tmp_path
    assert path.suffix == ".so"
    stamp = path.stat().st_mtime_ns
    assert native.build() == path
    assert path.stat().st_mtime_ns == stamp  # cached: not rebuilt
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed into place
    monkeypatch.setattr(native, "target_flags", lambda: ["-DATTNGRAFT_TILE=4"])
    assert native.build() != path  # other flags, another library


@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")
def test_a_failing_compiler_is_reported_with_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNGRAFT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "target_flags", lambda: ["-DATTNGRAFT_TILE=4", "-fno-such-flag"])
    with pytest.raises(RuntimeError, match=r"(?s)compiling neighbourhood\.cpp failed:.*no-such-flag"):
        native.build()
    assert not list(tmp_path.iterdir())  # no half-written library left behind


@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")
def test_the_build_command_prints_the_library(tmp_path: Path) -> None:
    environment = {"ATTNGRAFT_KERNEL_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "attngraft.blocks.kernels", "build"],
        capture_output=True, text=True, env=environment, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == tmp_path


@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")
def test_the_compiled_kernel_is_built_where_a_compiler_is() -> None:
    """``make setup`` builds it; the tests above would otherwise skip the native backend silently."""
    assert native.available()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES[:4], ids=lambda case: "x".join(map(str, case[:7])))
def test_flex_attention_forward_equals_the_reference(case: tuple, dtype: torch.dtype) -> None:
    """The CUDA backend's algorithm, run eagerly on CPU (flex_attention has no CPU backward, so forward only)."""
    inputs = {name: None if tensor is None else tensor.detach() for name, tensor in make_inputs(case, dtype).items()}
    with torch.no_grad():
        expected = plain(case[6], **dict(inputs))
        result = with_backend("flex")(case[6], **dict(inputs))
    tolerance = {"atol": 1e-12, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-4}
    torch.testing.assert_close(result, expected, **tolerance)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key": torch.zeros(1, 2, 4, 3, 6)}, r"key shape \(1, 2, 4, 3, 6\) must equal the query's \(1, 2, 4, 3, 5\)"),
        ({"value": torch.zeros(1, 1, 4, 3, 5)}, r"value must be \(1, 2, Dv, 3, 5\), got shape \(1, 1, 4, 3, 5\)"),
        ({"row_embedding": torch.zeros(1, 3, 2)}, r"row_embedding must be \(2, 3, d\) with 1 ≤ d ≤ 4"),
        ({"col_embedding": torch.zeros(2, 3, 5)}, r"col_embedding must be \(2, 3, d\) with 1 ≤ d ≤ 4"),
        ({"offset_bias": torch.zeros(1, 9)}, r"offset_bias must be \(2, 9\), got shape \(1, 9\)"),
        ({"kernel_size": 4}, "kernel_size must be a positive odd integer, got 4"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_mismatched_shapes_are_refused_naming_the_tensor(backend: str, change: dict, message: str) -> None:
    """No broadcasting: a head-less embedding would make the compiled kernel read past its end."""
    inputs = {
        "query": torch.zeros(1, 2, 4, 3, 5),
        "key": torch.zeros(1, 2, 4, 3, 5),
        "value": torch.zeros(1, 2, 4, 3, 5),
    }
    inputs["kernel_size"] = 3
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        kernels.neighbourhood_attention(**inputs, backend=backend)


def test_an_empty_batch_gives_an_empty_output() -> None:
    empty = torch.zeros(0, 2, 4, 3, 5)
    assert kernels.neighbourhood_attention(empty, empty, empty, 3).shape == (0, 2, 4, 3, 5)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_operators_pass_opcheck(dtype: torch.dtype) -> None:
    """Schemas, fake tensors (shapes, dtypes, strides) and autograd registration, by PyTorch's own checker."""
    from attngraft.blocks.kernels import cpu  # noqa: F401  (registers the operators)

    torch.manual_seed(0)
    qkv = torch.randn(2, 3, 2, 4, 3, 5, dtype=dtype).transpose(-1, -2).requires_grad_()  # not contiguous
    row, col = (torch.randn(2, 3, 2, dtype=dtype, requires_grad=True) for _ in range(2))
    torch.library.opcheck(torch.ops.attngraft.packed_neighbourhood_attention, (qkv, row, col, None, 3))
    query, key, value = (tensor.detach().requires_grad_() for tensor in qkv.unbind(1))
    offset = torch.randn(2, 9, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.attngraft.neighbourhood_attention, (query, key, value, None, None, offset, 3))


@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")
def test_the_cached_library_is_readable_by_everyone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared cache ($ATTNGRAFT_KERNEL_CACHE) must serve other users too (mkstemp makes files 0600)."""
    monkeypatch.setenv("ATTNGRAFT_KERNEL_CACHE", str(tmp_path))
    previous = os.umask(0o022)
    try:
        path = native.build()
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o755
