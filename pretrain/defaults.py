"""Default pretraining settings: the SimSiam paper's ImageNet ResNet-50 recipe (100 epochs, batch 512).

Presets in eval_configs/pretrain/ change only what differs from these values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class ImageFolderData:
    """The data description every ImageFolder consumer shares (pretraining, the kNN monitor, kNN and linear
    evaluation, the device loaders): the same key means the same thing in every stage's `data:` section."""
    # "embedded" generates the built-in synthetic ImageFolder under cache_dir; anything else is a path
    # to an ImageFolder tree (ImageNet layout: <root>/<class>/<image>) or its parent holding train/ (+ val/);
    # "" (pretraining's default): not given, the run refuses to start.
    root: str = "embedded"
    train_split: str = "train"      # sub-folder used for training when present
    val_split: str = "val"          # held-out split (kNN monitor, evaluation); "" disables it
    image_size: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    workers: int = 8                # loader processes per rank
    on_corrupt: str = "error"       # "error": stop naming the file; "skip": warn once per file, use another
    limit_per_class: int = 0        # >0 keeps the first N images of each class (quick runs, tests)
    cache_dir: str = "~/.cache/simsiam"


@dataclass(frozen=True)
class DataConfig(ImageFolderData):
    """Pretraining data: the shared description plus the MoCo v2 view's knobs. The recipe is ImageNet's, the
    dataset is the user's: data.root has no default (a path, or "embedded" for the generated demo data)."""
    root: str = ""
    min_scale: float = 0.2          # RandomResizedCrop scale lower bound (MoCo v2)
    blur: bool = True               # Gaussian blur p=0.5 (off for CIFAR, as in the paper's appendix)
    augmentation: str = "moco_v2"   # the two views (pretrain.augment): moco_v2 (the same view twice, SimSiam's) |
    #                                 byol (asymmetric: blur p 1.0 / 0.1, solarisation p 0 / 0.2) | simclr (jitter 0.8)
    # The views' CPU code: "fast" (pretrain.cpu_augment: OpenCV/numpy, uint8 views normalised on the device; over
    # twice the reference's images/s per core, docs/benchmarks.md) or "reference" (PIL/torchvision, the official
    # code's ops). Same parameter draws; pixels within rounding of each other; both learn alike.
    pipeline: str = "fast"
    prefetch: int = 4               # batches each loader process prepares ahead (data.workers > 0)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"          # resnet50 | resnet18 | resnet18_cifar (3x3 stem, no max-pool)
    dim: int = 2048                 # projector output / predictor output
    pred_dim: int = 512             # predictor bottleneck
    proj_layers: int = 3            # 3 for ImageNet, 2 for the CIFAR variant
    stop_gradient: bool = True      # the paper's central ablation: False collapses
    sync_bn: bool = True            # SyncBatchNorm across GPUs (plain BN on CPU / single process)
    zero_init_residual: bool = True  # last BN of each residual block starts at 0, as in the official code
    # The paper's ablations of the heads and of the target branch (pretrain.model, pretrain.target):
    predictor: str = "trained"      # trained | none (Table 1a: collapses) | fixed (Table 1b: random init, frozen)
    head_bn: str = "hidden_proj_out"  # BN in the heads (Table 3): none | hidden | hidden_proj_out | all
    proj_out_bn_affine: bool = False  # learnable affine of the projector's output BN (Table 3c: 68.1 on, 68.2 off)
    # online | kstep (Sec. 5.2, k-step alternation) | moving_average (Sec. 5.2) | momentum (an EMA copy of the
    # encoder: BYOL's target, MoCo's key encoder)
    target: str = "online"
    target_every: str = "1"         # kstep: refresh the target copy every N SGD steps, or "epoch"
    target_momentum: float = 0.8    # moving_average: eta_x <- m eta_x + (1 - m) z; momentum: the EMA's base m
    target_momentum_schedule: str = "constant"  # momentum: constant | cosine (BYOL: m rises to 1 per step)
    # Sizes the other methods' heads read (pretrain.methods; a non-default value under another method is refused):
    proj_hidden_dim: int = 0        # projector hidden width; 0: model.dim (SimSiam's projector)
    queue_size: int = 65536         # moco: negative keys in the queue
    prototypes: int = 3000          # swav: prototype vectors


@dataclass(frozen=True)
class OptimConfig:
    base_lr: float = 0.05           # lr = base_lr * batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    fix_pred_lr: bool = True        # predictor keeps the initial lr (paper: 68.1 vs 67.7)
    schedule: str = "cosine"        # cosine (per epoch, to 0) | constant
    warmup_epochs: int = 0          # linear warm-up per step, then the schedule over the remaining epochs
    optimizer: str = "sgd"          # sgd | lars (SimCLR, BYOL, SwAV at batch 4096; pretrain.lars)
    trust_coefficient: float = 0.001  # lars: the trust ratio's coefficient
    exclude_bn_bias: bool = False   # BN and bias parameters without weight decay and LARS adaptation
    freeze_prototypes_steps: int = 0  # swav: the prototypes stay fixed for the first N steps


@dataclass(frozen=True)
class LossConfig:
    similarity: str = "cosine"      # cosine | cross_entropy (Sec. 4.5: -softmax(z) . log softmax(p))
    symmetrisation: str = "symmetric"  # symmetric | asymmetric (one pair per image) | asymmetric_x2 (two pairs)
    temperature: float = 0.1        # simclr, moco, swav: the softmax temperature
    sinkhorn_iters: int = 3         # swav: Sinkhorn-Knopp iterations
    sinkhorn_epsilon: float = 0.05  # swav: the entropy regularisation of the codes


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 512           # global batch, split evenly across ranks
    seed: int = 0
    deterministic: bool = False     # deterministic algorithms (CPU tests of resume equality)
    amp: str = "none"               # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    gpu_augment: bool = False       # decode + augment on the GPU (pretrain.gpu_augment)
    print_freq: int = 10
    save_freq: int = 10             # keep checkpoint_{epoch:04d}.pth every N epochs (0: only the latest)
    max_steps_per_epoch: int = 0    # >0 truncates epochs (smoke runs)
    stop_after_epochs: int = 0      # >0 stops cleanly after this many epochs in this invocation (tests)


@dataclass(frozen=True)
class MonitorConfig:
    knn: bool = True
    knn_k: int = 200
    knn_t: float = 0.1
    knn_every: int = 1
    # Caps of the kNN monitor (the first N images per class; 0: all). At ImageNet scale the defaults give a
    # 100k-image bank and 10k queries: one forward pass of 110k images per epoch, under 1.5 % of an epoch's
    # training compute (1.28M images x two views x forward+backward, >= 6 forwards each), and a bank of
    # 100k x 2048 fp32 = 0.76 GiB on each rank. The CIFAR recipe uses the whole split, as the paper's monitor.
    knn_max_train: int = 100        # memory bank, images per class
    knn_max_val: int = 10           # held-out queries, images per class
    collapse: bool = True
    tensorboard: bool = True


@dataclass(frozen=True)
class PretrainConfig:
    method: str = "simsiam"         # simsiam | byol | simclr | moco | swav (pretrain.methods)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    init_from: Optional[str] = None  # start from weights of a checkpoint (not a resume)


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The paper's linear scaling rule, of pretraining and of linear evaluation: lr = base_lr x batch / 256."""
    return base_lr * batch_size / 256


def init_lr(cfg) -> float:
    """The initial lr of a config with optim.base_lr and train.batch_size (pretraining's, linear evaluation's)."""
    return scaled_lr(cfg.optim.base_lr, cfg.train.batch_size)
