"""The typed config schema: the only place where defaults live.

Structured-config dataclasses registered in Hydra's ConfigStore, so a wrong key, type or option
fails at compose time with the full key path, before anything is built. String options are Enums
(OmegaConf lists the valid names in its error). Defaults are the paper's recipe (spec section 4)
where the paper sets a value; ``conf/experiment/*.yaml`` choose recipes across groups on top.

Groups that are schema only (no YAML): ``data`` (synthetic | coco), ``optim`` (adamw | sgd),
``schedule`` (flat_cosine | cosine | constant) and ``model`` (rtmdet_tiny ... rtmdet_x, one node per
row of :data:`rtmdet_exp.models.variants.VARIANTS`). Groups whose nodes name a constructor with
``_target_`` in YAML (assigner, loss, augment, logger and the model patches) are checked against
that constructor by :func:`rtmdet_exp.experiment.build.instantiate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from rtmdet_exp.models.variants import VARIANTS, model_config

Device = Enum("Device", {"auto": "auto", "cpu": "cpu", "cuda": "cuda"})
Precision = Enum("Precision", {"auto": "auto", "fast": "fast", "bf16": "bf16", "fp32": "fp32"})
OnError = Enum("OnError", {"raise": "raise", "skip": "skip"})
StepMode = Enum("StepMode", {"auto": "auto", "eager": "eager", "compile": "compile", "cuda_graph": "cuda_graph"})
ScheduleKind = Enum("ScheduleKind", {"flat_cosine": "flat_cosine", "cosine": "cosine", "constant": "constant"})


@dataclass
class EMAConfig:
    enabled: bool = True  # validate and save an exponential moving average of the weights
    momentum: float = 0.0002  # ExpMomentumEMA final momentum (spec section 4)
    gamma: int = 2000  # ExpMomentumEMA warm-up time constant, in steps


@dataclass
class TrainerConfig:
    max_epochs: int = 300  # training length in epochs
    device: Device = Device.auto  # auto (the GPU when there is one) | cpu | cuda
    # auto (bf16 on a GPU, fp32 on the CPU) | fast (bf16 also on a CPU with native bf16: AMX or
    # AVX512-BF16) | bf16 | fp32
    precision: Precision = Precision.auto
    channels_last: Optional[bool] = None  # null = auto (on for a GPU) | true | false
    compile: Optional[bool] = None  # torch.compile the network: null = auto (one GPU, runs of >= 10,000 steps)
    step_mode: StepMode = StepMode.auto  # auto (cuda_graph on GPUs, eager on the CPU) | eager | compile | cuda_graph
    grad_clip: Optional[float] = None  # max gradient norm; null = no clipping (the paper clips none)
    # under torchrun on GPUs: SyncBatchNorm, statistics over all GPUs' images (the paper's recipe) | false:
    # each GPU's own batch statistics (Ultralytics' default; ~2 fewer collectives per BN layer and step)
    sync_bn: bool = True
    cudnn_benchmark: Optional[bool] = None  # cuDNN conv autotuning: null = auto (GPU runs of >= 10,000 steps)
    val_interval: int = 10  # validate every N epochs (and always after the last one)
    stage2_val_interval: int = 1  # validate every N epochs once the weak-augmentation stage runs
    val_subset: Optional[int] = None  # intermediate validations score the first N val images only (the last: all)
    log_interval: int = 10  # steps between logged training records
    checkpoint_interval: int = 10  # a resumable checkpoint every N epochs (and at the end; SIGTERM saves one too)
    checkpoint_interval_steps: Optional[int] = None  # also every N steps (long epochs); null = off
    keep_checkpoints: int = 2  # resumable checkpoints kept on disk (best.pt is kept apart)
    ema: EMAConfig = field(default_factory=EMAConfig)
    deterministic: bool = False  # deterministic algorithms (bitwise-equal resume on the CPU)
    max_bad_steps: int = 5  # consecutive NaN/inf steps skipped before the run stops
    auto_resume: bool = True  # continue when the run folder already holds an unfinished run
    limit_train_batches: Optional[int] = None  # debug: at most N training batches per epoch
    limit_val_batches: Optional[int] = None  # debug: at most N validation batches
    num_vis_images: int = 4  # validation images with drawn boxes sent to the logger


@dataclass
class SyntheticConfig:
    num_train: int = 2400  # training images generated (the default run sees each 5 times: experiment=quickstart)
    num_val: int = 200  # validation images generated (a fixed split)
    seed: int = 0  # generator seed: same seed, same bytes
    image_size: int = "${data.img_size}"  # type: ignore[assignment]  # generated size (own cache per size)


@dataclass
class DataConfig:
    _target_: str = "rtmdet_exp.data.datamodule.DataModule"
    name: str = MISSING  # a label for logs and reports
    root: str = MISSING  # dataset folder
    train_json: Optional[str] = None  # COCO instances json of the training split
    val_json: Optional[str] = None  # COCO instances json of the validation split
    train_images: Optional[str] = None  # folder the training json's file names are relative to
    val_images: Optional[str] = None  # folder the validation json's file names are relative to
    num_classes: int = MISSING  # class count; model.num_classes follows it
    img_size: int = 640  # square training and test size in pixels (a multiple of 32)
    batch_size: int = 32  # images per step per process (GPU)
    val_batch_size: Optional[int] = None  # images per validation step (null = batch_size)
    num_workers: int = 10  # DataLoader worker processes per process
    pin_memory: bool = True  # pinned host memory (used only with a GPU)
    # decode every image once into RAM before training (Ultralytics' cache=ram): the loader's largest cost
    # (~4 ms per 640 px image) goes; needs H x W x 3 bytes per image in each process (each torchrun rank
    # holds its own copy; refused past half the free memory)
    cache_images: bool = False
    on_error: OnError = OnError["raise"]  # bad images/annotations: raise (list them all) | skip
    validate: bool = True  # check the dataset before training


@dataclass
class SyntheticDataConfig(DataConfig):
    """The built-in procedural dataset, generated once in COCO format into ``root``."""

    name: str = "synthetic"
    # one folder per generated dataset: a run with other counts never regenerates (and so changes)
    # the files an earlier run's results.json points to
    root: str = ("${oc.env:RTMDET_DATA,data_cache}/synthetic_${data.synthetic.image_size}_s${data.synthetic.seed}"
                 "_${data.synthetic.num_train}-${data.synthetic.num_val}_c${data.num_classes}")
    num_classes: int = 10
    img_size: int = 320
    batch_size: int = 16
    num_workers: int = 2
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class CocoDataConfig(DataConfig):
    """Any COCO-format dataset: ``data=coco data.root=/data/coco`` (COCO's layout) or the four paths."""

    name: str = "coco"
    train_json: Optional[str] = "${data.root}/annotations/instances_train2017.json"
    val_json: Optional[str] = "${data.root}/annotations/instances_val2017.json"
    train_images: Optional[str] = "${data.root}/train2017"
    val_images: Optional[str] = "${data.root}/val2017"
    num_classes: int = "${coco_num_classes:${data.train_json}}"  # type: ignore[assignment]


@dataclass
class OptimConfig:
    _target_: str = MISSING
    lr: float = 0.004  # peak learning rate at base_batch_size
    base_batch_size: int = 256  # total batch that lr is meant for (the paper: 8 GPUs x 32)
    scale_lr: bool = True  # scale lr linearly to the real total batch (batch_size x GPUs)
    weight_decay: float = 0.05  # decoupled (AdamW) or L2 (SGD) weight decay; none on norms and biases
    backbone_lr_mult: float = 1.0  # lr multiplier of the backbone (e.g. 0.1 when fine-tuning)


@dataclass
class AdamWConfig(OptimConfig):
    _target_: str = "rtmdet_exp.engine.optim.adamw"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas


@dataclass
class SGDConfig(OptimConfig):
    _target_: str = "rtmdet_exp.engine.optim.sgd"
    lr: float = 0.01
    base_batch_size: int = 64
    weight_decay: float = 0.0005
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum


@dataclass
class ScheduleConfig:
    _target_: str = "rtmdet_exp.engine.schedule.FlatCosineSchedule"
    kind: ScheduleKind = ScheduleKind.flat_cosine  # flat_cosine | cosine | constant
    warmup_iters: int = 1000  # linear warm-up iterations (from warmup_start x lr)
    warmup_max_fraction: float = 0.1  # the warm-up never exceeds this fraction of all iterations
    flat_fraction: float = 0.5  # flat_cosine: fraction of training at the peak lr
    min_ratio: float = 0.05  # final lr as a fraction of the peak
    warmup_start: float = 1.0e-5  # lr factor at the first iteration


@dataclass
class TestConfig:
    score_thr: float = 0.001  # keep (prior, class) pairs scoring above this
    nms_pre: int = 30000  # pairs per level entering NMS
    iou_threshold: float = 0.65  # class-aware NMS IoU
    max_per_img: int = 300  # detections kept per image


@dataclass
class RootConfig:
    defaults: list[Any] = field(default_factory=list)
    experiment_name: str = "none"  # set by conf/experiment/<name>.yaml; shown in the recipe card
    seed: int = 0  # seeds python, numpy and torch; data order and augmentation follow it
    resume: bool = False  # continue this command's newest unfinished run; error if there is none
    dry_run: bool = False  # print the recipe card and run every check, without touching data
    run_name: Optional[str] = None  # names the run folder and the logged run (default: from the overrides)
    tags: list[str] = field(default_factory=list)  # extra tags for the logger
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    test: TestConfig = field(default_factory=TestConfig)
    data: Any = MISSING
    optim: Any = MISSING
    schedule: Any = MISSING
    model: Any = MISSING
    assigner: Any = MISSING
    loss: Any = MISSING
    augment: Any = MISSING
    logger: Any = MISSING


def register_schema() -> None:
    """Store the schema and the schema-only group options in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=RootConfig)
    cs.store(group="data", name="synthetic", node=SyntheticDataConfig)
    cs.store(group="data", name="coco", node=CocoDataConfig)
    cs.store(group="optim", name="adamw", node=AdamWConfig)
    cs.store(group="optim", name="sgd", node=SGDConfig)
    cs.store(group="schedule", name="flat_cosine", node=ScheduleConfig)
    cs.store(group="schedule", name="cosine", node=ScheduleConfig(kind=ScheduleKind.cosine, flat_fraction=0.0))
    cs.store(group="schedule", name="constant", node=ScheduleConfig(kind=ScheduleKind.constant))
    for name in VARIANTS:
        cs.store(group="model", name=f"rtmdet_{name}", node=model_config(name))
