"""Mixed-task batches at a site: each row equals that row run alone under its own deltas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaptlang.errors import RuntimeApplyError
from adaptlang.runtime.binding import resolve_module, split_path
from adaptlang.runtime.site import SiteModule

DIM = 16


def perturb(site: SiteModule, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in site.parts.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)


def build_linear_site() -> SiteModule:
    """A Linear with every part kind, perturbed so each changes the output."""
    torch.manual_seed(0)
    site = SiteModule.wrap(nn.Linear(DIM, DIM))
    gen = torch.Generator().manual_seed(1)
    site.add_part("a", "lora", {"rank": 2, "alpha": 4}, gen)
    site.add_part("b", "lora", {"rank": 3, "variant": "rslora", "bias": True}, gen)
    site.add_part("c", "lora", {"rank": 2, "variant": "dora"}, gen)
    site.add_part("i", "ia3", {"out_features": DIM}, gen)
    site.add_part("f", "ia3", {"in_features": DIM, "feedforward": True}, gen)
    site.add_part("s", "sparse", {"param": "weight", "k": 20, "select": "random", "seed": 1}, gen)
    for name, placement in [("ad1", "after"), ("ad2", "after"), ("p", "parallel"), ("bf", "before")]:
        site.add_part(name, "adapter", {"placement": placement, "dim": DIM, "size": 4, "act": "tanh"}, gen)
    site.add_part("nr", "adapter", {"placement": "after", "dim": DIM, "size": 4, "residual": False}, gen)
    perturb(site)
    return site


ROWS = [
    [("a", 1.0)],
    [("a", 0.5), ("b", 1.0), ("i", 1.0)],
    [],
    [("c", 1.0), ("f", 0.7), ("ad1", 1.0), ("ad2", 0.5)],
    [("s", 1.0), ("p", 1.0), ("bf", 1.0), ("a", 2.0)],
    [("a", 1.0), ("b", -1.0), ("ad2", 1.0), ("c", 0.3), ("i", 0.5), ("nr", 1.0)],
]


def assert_rows_match(site: SiteModule, x: torch.Tensor, rows: list) -> None:
    site.set_rows(rows)
    mixed = site(x)
    for r, row in enumerate(rows):
        site.set_active(row)  # also clears the per-row lists
        alone = site(x[r:r + 1])
        torch.testing.assert_close(mixed[r:r + 1], alone, atol=1e-5, rtol=1e-5, msg=f"row {r}: {row}")


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("shape", [(len(ROWS), 5, DIM), (len(ROWS), DIM)])
def test_each_row_equals_its_task_alone_on_a_linear(shape, quantized):
    site = build_linear_site()
    if quantized:
        site.quantize("nf4", 16, True, "float32")
    x = torch.randn(*shape)
    assert_rows_match(site, x, ROWS)


def test_rows_with_lora_on_an_embedding():
    torch.manual_seed(0)
    site = SiteModule.wrap(nn.Embedding(30, DIM))
    for name, rank in (("a", 2), ("b", 4)):
        site.add_part(name, "lora", {"rank": rank}, torch.Generator().manual_seed(rank))
    site.add_part("i", "ia3", {"out_features": DIM}, None)
    perturb(site)
    ids = torch.randint(0, 30, (3, 6))
    assert_rows_match(site, ids, [[("a", 1.0), ("b", 0.5)], [("i", 1.0)], [("b", 1.0)]])


def test_one_batched_product_for_every_row():
    site = build_linear_site()
    site.set_rows(ROWS)
    (group,) = site._prog.groups  # a, b: no dropout, one group
    # Row slots: (a) and (a, b); rows without plain LoRA ride on slot 0 at coefficient 0.
    assert [[p.rank for p in slot] for slot in group.slots] == [[2], [2, 3]] and group.rank == 5
    assert group.row_slot.tolist() == [0, 1, 0, 0, 0, 1]
    assert torch.equal(group.coef[2], torch.zeros(5)) and len(group.biases) == 1
    # a: w * alpha / r = 0.5 * 4 / 2; b (rsLoRA, alpha = r = 3): 1 * 3 / sqrt(3)
    torch.testing.assert_close(group.coef[1], torch.tensor([1.0] * 2 + [3 ** 0.5] * 3))
    torch.testing.assert_close(group.coef[0], torch.tensor([2.0] * 2 + [0.0] * 3))  # a alone: 1 * 4 / 2


def test_rows_in_a_llama_batch(rt):
    model = rt.tiny_llama()
    batch = rt.lm_batch(batch=3)
    sites = []
    for path, kind, site_dict in [
        ("model.layers.0.self_attn.q_proj", "lora", {"rank": 4}),
        ("model.layers.1.self_attn.v_proj", "lora", {"rank": 2, "variant": "dora"}),
        ("model.layers.1.mlp", "adapter", {"placement": "after", "dim": 32, "size": 4}),
    ]:
        parent_path, name = split_path(path)
        parent = resolve_module(model, parent_path, unwrap=True)
        site = SiteModule.wrap(parent._modules[name])
        parent._modules[name] = site
        for delta in ("t1", "t2"):
            site.add_part(delta, kind, site_dict, torch.Generator().manual_seed(len(sites)))
        perturb(site, seed=len(sites))
        sites.append(site)
    tasks = [[("t1", 1.0)], [("t2", 1.0)], []]
    for site in sites:
        site.set_rows(tasks)
    mixed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for r, row in enumerate(tasks):
        for site in sites:
            site.set_active(row)
        alone = model(input_ids=batch["input_ids"][r:r + 1], attention_mask=batch["attention_mask"][r:r + 1]).logits
        torch.testing.assert_close(mixed[r:r + 1], alone, atol=1e-5, rtol=1e-5)


def test_row_errors():
    site = build_linear_site()
    with pytest.raises(RuntimeApplyError, match="orders the adapters"):
        site.set_rows([[("ad1", 1.0), ("ad2", 1.0)], [("ad2", 1.0), ("ad1", 1.0)]])
    site.set_rows([[("a", 1.0)], []])
    with pytest.raises(RuntimeApplyError, match="2 rows; the input has 3"):
        site(torch.randn(3, DIM))
    with pytest.raises(RuntimeApplyError, match="cannot merge"):
        site.merge()
    norm = SiteModule.wrap(nn.LayerNorm(DIM))
    norm.add_part("s", "sparse", {"param": "weight", "k": 2}, None)
    with pytest.raises(RuntimeApplyError, match="cannot differ between rows"):
        norm.set_rows([[("s", 1.0)], []])
    norm.set_rows([[("s", 1.0)], [("s", 1.0)]])  # every row the same: the plain program, allowed
