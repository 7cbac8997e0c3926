"""Classification data: the embedded Fashion-MNIST subset and CIFAR-10/100 (pickle files).

Images are held in memory as uint8 ``[N, C, H, W]`` tensors; :class:`BatchLoader` shuffles,
augments (random crop with zero padding + horizontal flip, per sample) and normalizes whole
batches on the training device, which is much faster than per-image ``Dataset`` calls for
32x32 images.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from detkd.cls.schema import ClsDataConfig
from detkd.errors import DetkdError

REPO_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_FMNIST = REPO_ROOT / "data" / "sources" / "fashion_mnist_subset.npz"
EMBEDDED_FMNIST_TEST = REPO_ROOT / "data" / "sources" / "fashion_mnist_t10k.npz"  # the whole test split

# Per-channel mean/std of the training sets (0..1 scale).
_STATS = {
    "fmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

UNLABELLED = -100  # the label of a sample whose label is hidden (F.cross_entropy's ignore_index)


@dataclass
class ClsData:
    train_images: Tensor  # uint8 [N, C, H, W]
    train_labels: Tensor  # int64 [N]; UNLABELLED where hidden
    test_images: Tensor
    test_labels: Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    @property
    def num_labelled(self) -> int:
        return int((self.train_labels != UNLABELLED).sum())

    def summary(self) -> str:
        hidden = len(self.train_labels) - self.num_labelled
        extra = f", {hidden} with hidden labels" if hidden else ""
        return (f"{self.name}: {len(self.train_labels)} train{extra} / {len(self.test_labels)} test images, "
                f"{self.num_classes} classes, {self.in_channels}x{self.image_size}x{self.image_size}")


# ------------------------------------------------------------------------------ loading


def _read_npz(path: Path, keys: tuple[str, ...]) -> tuple[dict[str, np.ndarray], list[str] | None]:
    if not path.is_file():
        raise DetkdError(f"Fashion-MNIST file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as d:
            arrays = {k: d[k] for k in keys}
            names = [str(n) for n in d["class_names"]] if "class_names" in d.files else None
    except KeyError as exc:
        raise DetkdError(f"{path}: missing array {exc} (need {', '.join(keys)})") from None
    except (OSError, ValueError) as exc:
        raise DetkdError(f"cannot read {path}: {exc}") from None
    return arrays, names


def _load_fmnist(cfg: ClsDataConfig):
    if cfg.root:
        arrays, names = _read_npz(Path(cfg.root), ("train_images", "train_labels", "test_images", "test_labels"))
    else:
        arrays, names = _read_npz(EMBEDDED_FMNIST, ("train_images", "train_labels")
                                  + (("test_images", "test_labels") if cfg.test_split == "subset" else ()))
        if cfg.test_split == "t10k":
            arrays.update(_read_npz(EMBEDDED_FMNIST_TEST, ("test_images", "test_labels"))[0])
    num_classes = int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) + 1
    names = names or [str(i) for i in range(num_classes)]

    def images(a: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(1)  # [N, 1, 28, 28]
        if cfg.pad_to_32 and x.shape[-1] < 32:
            p = 32 - x.shape[-1]
            x = F.pad(x, (p // 2, p - p // 2, p // 2, p - p // 2))
        return x.repeat(1, 3, 1, 1) if cfg.gray_to_rgb else x

    mean, std = _STATS["fmnist"]
    if cfg.gray_to_rgb:
        mean, std = mean * 3, std * 3
    return (images(arrays["train_images"]), arrays["train_labels"], images(arrays["test_images"]),
            arrays["test_labels"], names, mean, std)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DetkdError(f"CIFAR file not found: {path}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as exc:  # corrupt or not a pickle
        raise DetkdError(f"cannot read CIFAR file {path}: {type(exc).__name__}: {exc}") from None


def _cifar_dir(root: str, folder: str) -> Path:
    if not root:
        raise DetkdError(f"'data.root' must name the folder holding {folder}/ (the python-pickle CIFAR files)")
    base = Path(root)
    return base if base.name == folder else base / folder


def _cifar_arrays(batch: dict, label_key: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (KeyError, ValueError) as exc:
        raise DetkdError(f"{path}: not a CIFAR python batch ({type(exc).__name__}: {exc})") from None
    return data, labels


def _load_cifar(cfg: ClsDataConfig):
    if cfg.dataset == "cifar10":
        folder = _cifar_dir(cfg.root, "cifar-10-batches-py")
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_files = [folder / "test_batch"]
        label_key, meta_file, names_key, num_classes = b"labels", folder / "batches.meta", b"label_names", 10
    else:
        folder = _cifar_dir(cfg.root, "cifar-100-python")
        train_files, test_files = [folder / "train"], [folder / "test"]
        label_key, meta_file, names_key, num_classes = b"fine_labels", folder / "meta", b"fine_label_names", 100
    missing = [str(p) for p in (*train_files, *test_files) if not p.is_file()]
    if missing:
        raise DetkdError(f"CIFAR file(s) not found: {', '.join(missing)}")

    def read(files):
        parts = [_cifar_arrays(_unpickle(p), label_key, p) for p in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x_tr, y_tr = read(train_files)
    x_te, y_te = read(test_files)
    names = [str(i) for i in range(num_classes)]
    if meta_file.is_file():
        meta = _unpickle(meta_file)
        if names_key in meta and len(meta[names_key]) == num_classes:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    mean, std = _STATS[cfg.dataset]
    return torch.from_numpy(x_tr), y_tr, torch.from_numpy(x_te), y_te, names, mean, std


def _subset(n_total: int, n: Optional[int], rng: np.random.Generator) -> np.ndarray:
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(rng.permutation(n_total)[:n])


def load_cls_data(cfg: ClsDataConfig) -> ClsData:
    """Load the configured dataset, take the subsets and hide labels (semi-supervised)."""
    if cfg.dataset == "fmnist":
        x_tr, y_tr, x_te, y_te, names, mean, std = _load_fmnist(cfg)
    else:
        x_tr, y_tr, x_te, y_te, names, mean, std = _load_cifar(cfg)
    rng = np.random.default_rng(cfg.subset_seed)
    tr = _subset(len(y_tr), cfg.train_subset, rng)
    te = _subset(len(y_te), cfg.test_subset, rng)
    y_train = torch.as_tensor(np.asarray(y_tr)[tr], dtype=torch.int64)
    y_test = torch.as_tensor(np.asarray(y_te)[te], dtype=torch.int64)
    for labels, split in ((y_train, "train"), (y_test, "test")):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise DetkdError(f"{cfg.dataset}: {split} labels outside [0, {len(names)})")
    if cfg.labelled_fraction < 1.0:
        n_lab = max(1, int(round(cfg.labelled_fraction * len(y_train))))
        hidden = rng.permutation(len(y_train))[n_lab:]
        y_train[torch.as_tensor(hidden, dtype=torch.int64)] = UNLABELLED
    return ClsData(x_tr[torch.as_tensor(tr)].contiguous(), y_train, x_te[torch.as_tensor(te)].contiguous(), y_test,
                   names, tuple(mean), tuple(std), cfg.dataset)


# ------------------------------------------------------------------------------ batches


class BatchLoader:
    """Mini-batches of an in-memory uint8 image tensor, as normalized float tensors on ``device``.

    Training: a new seeded permutation every epoch, the last incomplete batch dropped
    (unless it is the only one), per-sample random crop (zero padding ``crop_padding``) and
    horizontal flip. Evaluation: in order, every sample, no augmentation.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, mean, std, device: torch.device,
                 train: bool, augment: bool = False, crop_padding: int = 4, hflip: bool = True,
                 seed: int = 0) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.train = batch_size, train
        self.augment, self.crop_padding, self.hflip = augment and train, crop_padding, hflip
        self.device = device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = self.start = 0

    def __len__(self) -> int:
        n = len(self.labels)
        if self.train:
            return max(1, n // self.batch_size) if n else 0
        return math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next pass is ``epoch``'s, from its sample ``start`` on (a multiple of the batch
        size: a run resumed mid-epoch); the batches before it draw no augmentation."""
        self.epoch, self.start = epoch, start

    def _augment(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        if self.crop_padding:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            offs = torch.randint(0, 2 * p + 1, (b, 2), generator=self.generator).to(x.device)
            rows = offs[:, :1] + torch.arange(h, device=x.device)  # [B, H]
            cols = offs[:, 1:] + torch.arange(w, device=x.device)  # [B, W]
            batch = torch.arange(b, device=x.device)[:, None, None]
            crops = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
            # A fresh NCHW tensor: with C = 1 the view above counts as "contiguous" while its
            # strides are NHWC, and the CPU conv backward of torch 2.x can crash on it.
            x = torch.empty((b, x.shape[1], h, w), dtype=x.dtype, device=x.device)
            x.copy_(crops)
        if self.hflip:
            flip = (torch.rand(b, generator=self.generator) < 0.5).to(x.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(n)
        for b in range(self.start // self.batch_size if self.train else 0, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[idx].to(self.device, non_blocking=True).float()
            if self.augment:
                x = self._augment(x)
            yield (x - self.mean) / self.std, self.labels[idx].to(self.device, non_blocking=True)
