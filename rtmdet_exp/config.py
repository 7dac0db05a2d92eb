"""Config schemas and the one place where configs become objects.

The typed sections (trainer, data, optim, schedule and the top-level keys) are structured-config
dataclasses registered in Hydra's ConfigStore, so a wrong key or type fails at compose time with
the full key path. Sections that name a constructor with ``_target_`` (model, assigner, loss,
augment, logger) are checked against that constructor's signature by :func:`instantiate` before
anything is built, so a typo there also fails early and lists the valid keys.
"""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra.utils
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is valid."""


@dataclass
class EMAConfig:
    enabled: bool = True  # evaluate an exponential moving average of the weights
    momentum: float = 0.0002  # ExpMomentumEMA final momentum (spec section 4)
    gamma: int = 2000  # ExpMomentumEMA warm-up length in steps


@dataclass
class TrainerConfig:
    max_epochs: int = 40  # training length in epochs
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    channels_last: str = "auto"  # auto (on for GPU) | true | false
    compile: bool = False  # torch.compile the network
    grad_clip: Optional[float] = None  # max gradient norm; null disables clipping
    val_interval: int = 5  # evaluate every N epochs (and always at the end)
    stage2_val_interval: int = 1  # evaluate every N epochs once the weak-augmentation stage starts
    log_interval: int = 10  # steps between logged training records
    checkpoint_interval: int = 1  # save a resumable checkpoint every N epochs
    ema: EMAConfig = field(default_factory=EMAConfig)
    deterministic: bool = False  # torch deterministic algorithms (bitwise resume on CPU)
    max_bad_steps: int = 5  # consecutive non-finite steps tolerated before the run stops
    auto_resume: bool = True  # resume when the run folder already holds a checkpoint
    limit_train_batches: Optional[int] = None  # debug: at most N training batches per epoch
    limit_val_batches: Optional[int] = None  # debug: at most N validation batches
    num_vis_images: int = 4  # validation images with boxes sent to the logger


@dataclass
class SyntheticConfig:
    num_train: int = 800  # training images generated
    num_val: int = 200  # validation images generated (fixed split)
    seed: int = 0  # generator seed; same seed, same bytes
    image_size: Optional[int] = None  # generated image size (default: data.img_size)


@dataclass
class DataConfig:
    _target_: str = "rtmdet_exp.data.datamodule.DataModule"
    name: str = "synthetic"  # a label for logs and reports
    root: str = MISSING  # dataset folder
    train_json: Optional[str] = None  # COCO instances json of the training split
    val_json: Optional[str] = None  # COCO instances json of the validation split
    train_images: Optional[str] = None  # folder holding the training images
    val_images: Optional[str] = None  # folder holding the validation images
    num_classes: int = MISSING  # class count; the model's num_classes follows it
    img_size: int = 320  # square training and test size in pixels
    batch_size: int = 16  # images per step per process
    val_batch_size: Optional[int] = None  # images per validation step (default: batch_size)
    num_workers: int = 2  # DataLoader worker processes
    pin_memory: bool = True  # pinned host memory for faster copies to the GPU
    on_error: str = "raise"  # bad images/annotations: raise (list them all) | skip
    validate: bool = True  # check the dataset before training
    synthetic: Optional[SyntheticConfig] = None  # generate the built-in dataset into root


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 0.004  # learning rate at base_batch_size
    base_batch_size: int = 256  # total batch that lr is meant for (spec: 8 GPUs x 32)
    scale_lr: bool = True  # scale lr linearly to the real total batch
    weight_decay: float = 0.05  # decoupled weight decay (none on norm layers and biases)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    momentum: float = 0.9  # SGD momentum


@dataclass
class ScheduleConfig:
    kind: str = "flat_cosine"  # flat_cosine | cosine | constant
    warmup_iters: int = 1000  # linear warm-up length in iterations
    warmup_max_fraction: float = 0.1  # warm-up never exceeds this fraction of training
    flat_fraction: float = 0.5  # flat_cosine: fraction of training at full lr
    min_ratio: float = 0.05  # final lr as a fraction of the peak


@dataclass
class RootConfig:
    defaults: list[Any] = field(default_factory=list)
    seed: int = 0  # seeds python, numpy and torch; data order and augmentation follow it
    resume: bool = False  # continue the run in hydra.run.dir from its last checkpoint
    run_name: Optional[str] = None  # a name for logs (default: derived from the overrides)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    model: Any = MISSING
    assigner: Any = MISSING
    loss: Any = MISSING
    augment: Any = MISSING
    logger: Any = MISSING
    test: Any = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)  # extra tags for the logger


def coco_num_classes(ann_file: str) -> int:
    """Number of categories in a COCO json (resolver ``${coco_num_classes:path}``)."""
    path = Path(ann_file)
    if not path.is_file():
        raise ConfigError(f"data.train_json: file not found: {path} (set data.train_json=... or data.num_classes=...)")
    with path.open() as f:
        cats = json.load(f).get("categories")
    if not cats:
        raise ConfigError(f"data.train_json: {path} has no 'categories' list; is it a COCO instances file?")
    return len(cats)


def register() -> None:
    """Register the schema and resolvers (idempotent; call before composing)."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=RootConfig)
    if not OmegaConf.has_resolver("coco_num_classes"):
        OmegaConf.register_new_resolver("coco_num_classes", coco_num_classes)
    from rtmdet_exp.data.pipelines import register_resolvers

    register_resolvers()


def _check_keys(node: DictConfig, where: str) -> None:
    """Fail on keys the ``_target_`` constructor does not take, listing the ones it does."""
    target = node.get("_target_")
    if not isinstance(target, str):
        return
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{where}._target_: cannot import '{target}': {err}") from err
    sig = inspect.signature(obj)
    params = sig.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in node.keys():
        key = str(key)
        if key.startswith("_"):
            continue
        if not takes_any and key not in params:
            valid = ", ".join(p for p in params if p != "self")
            raise ConfigError(f"{where}.{key}: '{target.rsplit('.', 1)[-1]}' has no option '{key}'; valid: {valid}")
        child = node.get(key)
        if isinstance(child, DictConfig):
            _check_keys(child, f"{where}.{key}")


def instantiate(node: Any, where: str, **kwargs: Any) -> Any:
    """Build an object from a ``_target_`` config: the only way configs become objects.

    Keys are checked against the constructor first; a ``ValueError``/``TypeError`` raised while
    building is re-raised as :class:`ConfigError` prefixed with the config path ``where``.
    """
    if isinstance(node, DictConfig):
        _check_keys(node, where)
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except ConfigError:
        raise
    except Exception as err:  # hydra wraps constructor errors in InstantiationException
        cause = err
        while cause.__cause__ is not None and not isinstance(cause, (ValueError, TypeError)):
            cause = cause.__cause__
        raise ConfigError(f"{where}: {cause}") from err


def to_flat_dict(cfg: DictConfig) -> dict[str, Any]:
    """Resolved config flattened to dotted keys (for loggers and reports)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return out
