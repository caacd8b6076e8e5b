"""``instantft table1``: counts derived here from the layer sizes, the paper's Table 1, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from instantft.adapters import SkipAdapters
from instantft.analysis import conventions
from instantft.analysis.costs import DEFAULT, backward_flops, describe, method_plan, network
from instantft.analysis.paper import PAPER_TABLE1, printed_flops, printed_memory
from instantft.analysis.table1 import METHODS, table1_markdown, table1_rows
from instantft.cli import main
from instantft.errors import InstantFTError
from instantft.models import build

ARCH = {"mnist": "lenet5-mnist", "svhn": "lenet5-svhn"}
SKIP = ("skip-lora", "skip2-lora", "instantft")


@cache
def rows(dataset: str, rank: int) -> dict[str, dict[str, Any]]:
    return {r["method"]: r for r in table1_rows(dataset, rank)}


def expected_params(dataset: str, rank: int) -> dict[str, int]:
    """Trainable parameters from the nn.Module shapes and layer sizes alone."""
    model = build(ARCH[dataset])
    d_in, d_out, c = model.layer_input_sizes(), model.layer_output_sizes(), model.config.num_classes
    skip = rank * sum(d + c for d in d_in)
    return {
        "ft-all": sum(p.numel() for p in model.parameters()),
        "ft-last": model.fc3.weight.numel() + model.fc3.bias.numel(),
        "ft-bias": sum(layer.bias.numel() for layer in model.layers),
        "lora-all": rank * sum(i + o for i, o in zip(d_in, d_out, strict=True)),
        "lora-last": rank * (d_in[-1] + d_out[-1]),
        **dict.fromkeys(SKIP, skip),
    }


@pytest.mark.parametrize("dataset", ["mnist", "svhn"])
@pytest.mark.parametrize("rank", [4, 8])
def test_params_and_forward_flops_from_layer_sizes(dataset: str, rank: int) -> None:
    model = build(ARCH[dataset])
    d_in, d_out = model.layer_input_sizes(), model.layer_output_sizes()
    macs = sum(o * layer.weight[0].numel() for o, layer in zip(d_out, model.layers, strict=True))
    pooled = d_in[1] + d_in[2]  # conv1 and conv2 are pooled 2x2 into x1, x2
    base = 2 * macs + sum(d_out) + sum(d_out[:-1]) + 3 * pooled
    got = rows(dataset, rank)
    for method, params in expected_params(dataset, rank).items():
        assert got[method]["trainable_params"] == params, method
        adapters = 0 if method.startswith("ft-") else params
        assert got[method]["forward_flops"] == base + 2 * adapters, method


@pytest.mark.parametrize("dataset", ["mnist", "svhn"])
def test_every_paper_cell_at_printed_precision(dataset: str) -> None:
    got = rows(dataset, 4)
    for method, paper in PAPER_TABLE1[dataset].items():
        r = got[method]
        assert r["trainable_params"] == paper.trainable_params, method
        assert printed_flops(r["forward_flops"]) == printed_flops(paper.forward_flops), method
        assert printed_flops(r["backward_flops"]) == printed_flops(paper.backward_flops), method
        assert printed_memory(r["memory_bytes"]) == printed_memory(paper.memory_bytes), method
        assert all(r["matches_paper"].values()), method


@pytest.mark.parametrize("dataset", ["mnist", "svhn"])
def test_backward_matmuls_equal_what_autograd_runs(dataset: str) -> None:
    """Our backward minus the element-wise ops equals torch's count of the autograd backward."""
    model = network(dataset)
    layers = describe(model)
    matmuls_only = replace(DEFAULT, bias_grad_flops=False, relu_backward_flops=False)
    for name in ("ft-all", "ft-last", "ft-bias", "lora-all", "lora-last"):
        method, plan = method_plan(model, layers, name, 4)
        y = method.model(torch.randn(1, *model.input_shape))
        loss = F.cross_entropy(y, torch.tensor([3]))
        with FlopCounterMode(display=False) as counter:
            loss.backward()
        assert counter.get_total_flops() == backward_flops(layers, plan, matmuls_only), name


def test_skip_required_backward_equals_hand_written_gradients() -> None:
    model = network("mnist")
    layers = describe(model)
    method, _ = method_plan(model, layers, "instantft", 4)
    adapters: SkipAdapters = method.adapters  # type: ignore[attr-defined]
    xs, _ = model.trace(torch.randn(1, *model.input_shape))
    xs = [x.flatten(1) for x in xs]
    _, hs = adapters.delta(xs)
    with FlopCounterMode(display=False) as counter:
        adapters.grads(xs, hs, torch.randn(1, 10))
    assert counter.get_total_flops() == rows("mnist", 4)["instantft"]["backward_flops_required"]


def test_adopted_conventions_are_the_ones_that_fit() -> None:
    memory = [s.convention for s in conventions.search("memory") if s.matched == s.cells]
    assert memory == [DEFAULT]
    backward = [s.convention for s in conventions.search("backward") if s.matched == s.cells]
    assert DEFAULT in backward
    assert all(replace(c, loss_grad_flops=0) == DEFAULT for c in backward)


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, list) and len(out) == 2 * len(METHODS)
    for r in out:
        for key in ("dataset", "rank", "method", "trainable_params", "forward_flops", "backward_flops", "memory_bytes"):
            assert isinstance(r[key], int | str), key
        if r["method"] in PAPER_TABLE1[r["dataset"]]:
            for key in ("trainable_params", "forward_flops", "backward_flops", "memory_bytes"):
                assert isinstance(r[f"paper_{key}"], int), key


def test_cli_rank_8_keeps_the_paper_only_where_rank_does_not_matter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table1", "--json", "--dataset", "svhn", "--rank", "8"]) == 0
    out = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert {r["dataset"] for r in out.values()} == {"svhn"}
    assert "paper_trainable_params" in out["ft-all"]
    assert "paper_trainable_params" not in out["lora-all"]


def test_cli_table_and_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table1", "--dataset", "mnist"]) == 0
    text = capsys.readouterr().out
    assert "InstantFT" in text and "Conventions" in text
    md = table1_markdown("both", 4)
    assert "MNIST network" in md and "SVHN network" in md and md.count("| InstantFT |") == 2


def test_unknown_dataset() -> None:
    with pytest.raises(InstantFTError):
        table1_rows("cifar", 4)
