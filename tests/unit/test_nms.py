"""rtmdet_exp.ops.nms: torchvision's NMS rule without importing torchvision's package."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision.ops

from rtmdet_exp.ops.nms import batched_nms, nms


def random_boxes(n: int, groups: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = 5 + torch.rand(n, 2, generator=g) * 60
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g), torch.randint(0, groups, (n,), generator=g)


def test_a_hand_made_case() -> None:
    """A and B overlap with IoU 81/119 = 0.68; C is far away. Same group: B goes; other groups: all stay."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5).tolist() == [0, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 1]), 0.5).tolist() == [0, 1, 2]
    assert batched_nms(boxes[:0], scores[:0], torch.zeros(0, dtype=torch.int64), 0.5).tolist() == []


@pytest.mark.parametrize("n", [300, 2500])  # one shifted NMS, and one NMS per group (> 1,000 boxes)
def test_batched_nms_equals_torchvision(n: int) -> None:
    boxes, scores, groups = random_boxes(n, 12, seed=n)
    want = torchvision.ops.batched_nms(boxes, scores, groups, 0.6)
    got = batched_nms(boxes, scores, groups, 0.6)
    assert 0 < got.numel() < n
    assert torch.equal(got, want)
    assert torch.equal(nms(boxes, scores, 0.6), torchvision.ops.nms(boxes, scores, 0.6))


def test_no_torchvision_package_is_imported() -> None:
    """The training entry point and an NMS call leave torchvision's package (and torch._dynamo) unimported;
    importing torchvision afterwards still works."""
    code = textwrap.dedent("""
        import sys, torch
        import rtmdet_exp.experiment.train
        from rtmdet_exp.ops.nms import nms
        keep = nms(torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]]), torch.tensor([0.9, 0.8]), 0.5)
        print(keep.tolist(), "torchvision" in sys.modules, "torch._dynamo" in sys.modules)
        import torchvision.ops  # loads the same library a second time: both keep working
        print(torchvision.ops.nms(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0.8, 0.9]), 0.5).tolist())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split("\n")[-3:-1] == ["[0] False False", "[1, 0]"]
