"""The training data of a step does not depend on how the loader got there.

With Mosaic + MixUp (whose caches hold earlier images) the batches of an epoch made by 2 worker
processes, by the same loader resumed at a later batch, and by an in-process loader (what the
preview tool draws) are bitwise the same; a resume rebuilds each lane's cache by replaying it.
The reference is an uninterrupted pass of the same loader, so no expected value comes from the
code under test alone: any dependence on worker scheduling, resume point or process would differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtmdet_exp.experiment import build, compose

pytestmark = pytest.mark.usefixtures("one_thread")

# 24 images of 64 px in batches of 4: 6 batches per epoch; Mosaic + MixUp in epochs 0-2, stage 2 in 3.
SETTINGS = ("augment=rtmdet", "data.img_size=64", "data.batch_size=4", "data.num_workers=2",
            "data.synthetic.num_train=24", "data.synthetic.num_val=4", "trainer.max_epochs=4",
            "augment.stage2_epochs=1", "model=rtmdet_s", "seed=3")


def data_module():
    cfg = compose(SETTINGS)
    data = build.build_data(cfg, build.build_augment(cfg))
    data.setup()
    return data


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(b["images"].clone(), b["boxes"].clone(), b["labels"].clone(), b["mask"].clone()) for b in loader]


@pytest.fixture(scope="module")
def reference() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Epoch 1 (stage 1, caches warm from epoch 0 would be a bug: they are cleared per epoch)."""
    data = data_module()
    assert data.steps_per_epoch == 6
    return batches(data.train_loader(1))


def assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert all(torch.equal(a, b) for a, b in zip(g, w)), f"batch {i} differs"


def test_epoch_does_not_depend_on_the_previous_one(reference: list) -> None:
    data = data_module()
    batches(data.train_loader(0))  # epoch 0 fills the caches first
    assert_same(batches(data.train_loader(1)), reference)


@pytest.mark.parametrize("start", [1, 2, 5])
def test_resumed_loader_makes_the_same_batches(reference: list, start: int) -> None:
    assert_same(batches(data_module().train_loader(1, start_batch=start)), reference[start:])


@pytest.mark.parametrize("start", [0, 3])
def test_in_process_loader_makes_the_same_batches(reference: list, start: int) -> None:
    data = data_module()
    assert_same(batches(data.train_loader(1, start_batch=start, in_process=True)), reference[start:])
    # start 3: lane 1 replays batch 1, lane 0 replays batches 0 and 2 (4 images each)
    assert data._train_set.replayed == {0: 0, 3: 12}[start]


def test_images_cached_in_memory_make_the_same_batches(reference: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """data.cache_images=true: decoded once before the workers fork, never again (decoding is made to
    fail afterwards, in this process and so in the forked workers), and the batches are the same."""
    import cv2

    cfg = compose([*SETTINGS, "data.cache_images=true"])
    data = build.build_data(cfg, build.build_augment(cfg))
    data.setup()

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was decoded after caching")

    monkeypatch.setattr(cv2, "imread", no_decoding)
    assert_same(batches(data.train_loader(1)), reference)


def test_mosaic_really_mixes_images(reference: list) -> None:
    """Guard against a trivially equal comparison: mid-epoch batches hold Mosaic canvases, which
    contain boxes of more than one source image (their count differs from any single image's)."""
    counts = [int(mask.sum()) for _, _, _, mask in reference]
    assert len(set(counts)) > 1 and max(counts) > 4


def test_preview_draws_the_training_batches(reference: list, tmp_path: Path) -> None:
    from rtmdet_exp.cli.preview import main

    import cv2

    from rtmdet_exp.cli.preview import draw_grid

    out = main([*SETTINGS, "epoch=1", "start_batch=2", "n=4", f"out={tmp_path / 'p.png'}"])
    images, boxes, labels, mask = reference[2]
    expected = draw_grid([im.permute(1, 2, 0).numpy() for im in images], [b[m].numpy() for b, m in zip(boxes, mask)],
                         [lb[m].numpy() for lb, m in zip(labels, mask)], data_module().class_names)
    assert (cv2.imread(str(out)) == expected).all()


def test_one_loader_across_epochs_makes_each_epochs_batches() -> None:
    """The training loop iterates one loader over all its epochs (workers never restart). With 5
    batches per epoch and 2 workers, the worker that starts an epoch alternates, and the run starts
    mid-epoch (a resume): the stream must still equal a fresh loader per epoch, stage switch included."""
    settings = [s for s in SETTINGS if not s.startswith("data.synthetic.num_train")] + ["data.synthetic.num_train=20"]
    cfg = compose(settings)

    def fresh():
        data = build.build_data(cfg, build.build_augment(cfg))
        data.setup()
        return data

    per_epoch = batches(fresh().train_loader(0, start_batch=3))
    for epoch in range(1, 4):
        per_epoch += batches(fresh().train_loader(epoch))
    data = fresh()
    assert data.steps_per_epoch == 5
    assert_same(batches(data.train_loader(0, start_batch=3, end_epoch=4)), per_epoch)
    assert len(per_epoch) == 2 + 3 * 5
    cut = batches(data.train_loader(2, end_epoch=4, max_batches=2))  # limit_train_batches cuts every epoch
    assert_same(cut, per_epoch[2 + 5:2 + 5 + 2] + per_epoch[2 + 10:2 + 10 + 2])


def test_training_batches_leave_out_what_only_validation_reads(reference: list) -> None:
    """Each tensor a worker sends costs the main process a handshake: a training batch holds the
    four the step reads; validation batches keep ``meta`` (scales and ids for the evaluator)."""
    data = data_module()
    train_batch = next(iter(data.train_loader(0)))
    val_batch = next(iter(data.val_loader()))
    assert set(train_batch) == {"images", "boxes", "labels", "mask"}
    assert set(val_batch) == {"images", "boxes", "labels", "mask", "meta"}
    assert set(val_batch["meta"]) == {"image_id", "ori_shape", "img_shape", "scale_factor", "pad_offset"}


def test_loader_workers_run_one_opencv_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker runs OpenCV on one thread (N workers x a pool per core oversubscribe the CPU), also
    when the main process had a pool running: a worker that set the limit itself would wait forever
    on the parent's pool lock, which the loader's timeout turns into an error here."""
    import cv2
    import numpy as np

    from rtmdet_exp.data import datamodule

    seen, collate = [], datamodule.collate

    def collate_noting_threads(samples: list, **kwargs: bool) -> dict:
        return {**collate(samples, **kwargs), "opencv_threads": torch.tensor(cv2.getNumThreads())}

    monkeypatch.setattr(datamodule, "collate", collate_noting_threads)
    data = data_module()  # (generating the data set may set OpenCV's threads: set them after it)
    cv2.setNumThreads(4)
    cv2.warpAffine(np.zeros((512, 512, 3), np.uint8), np.eye(2, 3, dtype=np.float32), (256, 256))  # pool started
    try:
        for loader in (data.train_loader(0), data.val_loader()):
            loader.timeout = 30
            batches = iter(loader)
            try:
                seen += [int(b["opencv_threads"]) for b in batches]
            except RuntimeError:  # timed out: workers stuck on a lock never exit by themselves
                for worker in batches._workers:
                    worker.kill()
                raise
    finally:
        cv2.setNumThreads(-1)  # OpenCV's default again for the other tests
    assert len(seen) == 6 + 1 and set(seen) == {1}
