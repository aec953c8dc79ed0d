"""Image folders: ``root/<class>/**/*.png`` (labelled: class indices from :mod:`advshield.data.labels`) or a
flat tree of images (label -1). Images are read with Pillow into float32 C×H×W tensors in [0,1].

Pixel modes are handled explicitly: 8-bit values are divided by 255, 16-bit ones by 65535; alpha channels
are dropped (not composited onto a background); palette, CMYK and YCbCr images become RGB. Pillow itself
reduces 16-bit-per-channel colour PNGs to 8-bit RGB, so those arrive with 8-bit precision. EXIF orientation
is not applied: pixels are used as stored.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..utils import atomic_path
from .labels import resolve_labels
from .tensors import TensorDataset

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
# ITU-R 601-2 luma weights, the ones Pillow uses for "RGB" → "L".
LUMA = (0.299, 0.587, 0.114)
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def is_image(path: Path) -> bool:
    """True for a visible file whose extension is in :data:`IMAGE_EXTS` (any case)."""
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def _walk_images(d: Path) -> list[Path]:
    """Image files under ``d`` (recursive, hidden entries skipped), sorted by relative path. A directory that
    cannot be listed is a one-line DataError (never silently skipped: that would shift labels)."""
    def fail(e: OSError) -> None:
        where = e.filename or d
        raise DataError(f"cannot read folder {where}: {e.strerror or _one_line(e)}") from None

    out = []
    for dirpath, dirnames, filenames in os.walk(d, onerror=fail):
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        out.extend(Path(dirpath) / f for f in filenames if is_image(Path(f)))
    return sorted(out, key=lambda p: p.relative_to(d).parts)


class ImageFolder:
    """Image files under ``root``, listed once in a deterministic order.

    If any non-hidden sub-directory of ``root`` holds an image (recursively), the tree has class folders: EVERY
    non-hidden sub-directory is a class, empty ones included (so an empty class never shifts the others);
    ``classes`` are their names sorted, ``class_counts`` their image counts, and ``labels[i]`` the position of
    image ``i``'s class in ``classes`` (the raw position: :func:`advshield.data.labels.resolve_labels` turns it
    into a class index). Images are found recursively inside class folders; files directly in ``root`` are
    ignored. Otherwise all images under ``root`` are unlabelled: label -1 and ``classes == []``. A folder that
    cannot be listed is a DataError.
    """

    def __init__(self, root: str | os.PathLike, channels: int | None = None,
                 size: int | tuple[int, int] | None = None) -> None:
        self.root = Path(root)
        self.channels = _check_channels(channels)
        self.size = size_pair(size) if size is not None else None  # every image resized to (H, W) when set
        if not self.root.exists():
            raise DataError(f"image folder {self.root} does not exist")
        if not self.root.is_dir():
            raise DataError(f"{self.root} is not a directory")
        try:
            subdirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as e:
            raise DataError(f"cannot read folder {self.root}: {e.strerror or _one_line(e)}") from None
        per_class = [(d.name, _walk_images(d)) for d in subdirs]
        self.files: list[Path] = []
        self.labels: list[int] = []
        self.classes: list[str] = []
        self.class_counts: list[int] = []
        if any(files for _, files in per_class):
            self.classes = [name for name, _ in per_class]
            self.class_counts = [len(files) for _, files in per_class]
            for label, (_, files) in enumerate(per_class):
                self.files += files
                self.labels += [label] * len(files)
        else:
            self.files = _walk_images(self.root)
            self.labels = [-1] * len(self.files)
        if not self.files:
            raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) found in {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def rel(self, i: int) -> Path:
        """Path of image ``i`` relative to ``root``."""
        return self.files[i].relative_to(self.root)

    def load(self, i: int) -> torch.Tensor:
        """Image ``i`` as float32 C×H×W in [0,1] (resized to :attr:`size` when set)."""
        x = read_image(self.files[i], self.channels)
        return resize(x, self.size) if self.size is not None else x

    def shape(self, i: int) -> tuple[int, int, int]:
        """(C, H, W) that :meth:`load` returns for image ``i``, from the file header only."""
        c, h, w = header_shape(self.files[i], self.channels)
        return (c, *self.size) if self.size is not None else (c, h, w)


def _check_channels(channels: int | None) -> int | None:
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None (native), not {channels!r}")
    return channels


def _open(path: Path) -> Image.Image:
    """Open ``path`` lazily (header only); unreadable files become a DataError naming the file."""
    try:
        return Image.open(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {_one_line(e)}") from None


def native_channels(mode: str) -> int:
    """1 for grayscale Pillow modes (with or without alpha, 8/16/32-bit), 3 for everything else."""
    return 1 if mode in _GRAY_MODES or mode in _SIXTEEN_BIT else 3


def _to_array(img: Image.Image) -> np.ndarray:
    """Decoded Pillow image → float32 H×W×C (C = 1 or 3) in [0,1], per the module's mode rules."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        a = np.asarray(img).astype(np.float32) / 65535.0
    elif mode == "I":  # 32-bit ints: 8-bit data unless values exceed 255, then assume 16-bit
        a = np.asarray(img).astype(np.float32)
        a = np.clip(a / (65535.0 if a.size and a.max() > 255 else 255.0), 0.0, 1.0)
    elif mode == "F":  # floats: assumed already in [0,1]
        a = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float32)), 0.0, 1.0)
    elif mode in ("1", "L"):
        a = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    elif mode in ("LA", "La"):
        a = np.asarray(img.convert("LA"), dtype=np.float32)[..., 0] / 255.0
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        a = np.asarray(img.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32)[..., :3] / 255.0
    elif mode == "RGB":
        a = np.asarray(img, dtype=np.float32) / 255.0
    elif mode in ("RGBA", "RGBa", "RGBX"):
        a = np.asarray(img.convert("RGBA"), dtype=np.float32)[..., :3] / 255.0
    else:  # CMYK, YCbCr, LAB, HSV, ...
        try:
            rgb = img.convert("RGB")
        except ValueError:
            raise DataError(f"image mode {mode} is not supported") from None
        a = np.asarray(rgb, dtype=np.float32) / 255.0
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    return a[..., None] if a.ndim == 2 else a


def convert_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """C×H×W float: ``channels=1`` → ITU-R 601 luminance, ``3`` → gray stacked 3 times, None → unchanged."""
    _check_channels(channels)
    if channels is None or x.shape[0] == channels:
        return x
    if channels == 3:
        return x.expand(3, -1, -1).contiguous()
    w = torch.tensor(LUMA, dtype=x.dtype).view(3, 1, 1)
    return (x * w).sum(0, keepdim=True)


def read_image(path: str | os.PathLike, channels: int | None = None) -> torch.Tensor:
    """Read an image file as float32 C×H×W in [0,1] (C native 1 or 3, or as ``channels`` asks)."""
    path = Path(path)
    _check_channels(channels)
    img = _open(path)
    try:
        with img:
            img.load()
            a = _to_array(img)
    except DataError as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"cannot read image {path}: {_one_line(e)}") from None
    return convert_channels(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))), channels)


def header_shape(path: str | os.PathLike, channels: int | None = None) -> tuple[int, int, int]:
    """(C, H, W) that :func:`read_image` will return, read from the file header only."""
    path = Path(path)
    img = _open(path)
    with img:
        w, h = img.size
        c = native_channels(img.mode)
    return (channels or c, h, w)


def group_by_size(folder: ImageFolder) -> list[list[int]]:
    """Indices of ``folder`` grouped by (C, H, W), groups in order of first appearance, indices ascending."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i in range(len(folder.files)):
        groups.setdefault(folder.shape(i), []).append(i)
    return list(groups.values())


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize float C×H×W to C×size[0]×size[1] with Pillow bilinear (per channel, in float precision)."""
    h, w = size
    if tuple(x.shape[1:]) == (h, w):
        return x
    chans = [np.asarray(Image.fromarray(c.numpy().astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
             for c in x.float()]
    return torch.from_numpy(np.stack(chans)).clamp_(0.0, 1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [0,1] → uint8 via round(x*255) (values clamped, NaN → 0)."""
    return torch.nan_to_num(x.float()).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """An int or (H, W) → positive (H, W)."""
    h, w = (size, size) if isinstance(size, int) else size
    if int(h) < 1 or int(w) < 1:
        raise DataError(f"size must be positive, not {size!r}")
    return int(h), int(w)


def image_folder(root: str | os.PathLike, channels: int | None = None,
                 size: int | tuple[int, int] | None = None,
                 class_map: Mapping[str, int] | str | os.PathLike | None = None,
                 labels: str = "auto", flags: tuple[str, str, str] = ("labels", "class_map", "size=(H, W)"),
                 stream: bool = False, workers: int = 0) -> TensorDataset:
    """All images under ``root`` as a uint8 N×C×H×W :class:`TensorDataset`, or with ``stream`` a
    :class:`~advshield.data.stream.FolderStream` that reads them batch by batch (``workers`` DataLoader
    processes; same checks up front, from the file headers).

    Labels come from :func:`~advshield.data.labels.resolve_labels` (``labels`` "auto", "folder" or "model";
    ``class_map`` a dict or JSON file): class indices for a tree with class folders, -1 for a flat tree or
    ``labels="model"``. ``classes`` are then the class names by index and ``class_mapping`` the folder → index
    mapping (None without class folders). Images must share one size unless ``size=(H, W)`` is given, in which
    case each is resized (bilinear). Grayscale and colour images can only be mixed with ``channels`` set.
    ``flags``: how messages name the labels, class-map and size arguments (a CLI passes its flags).
    """
    folder = ImageFolder(root, channels)
    plan = resolve_labels(folder, labels, class_map, mode_name=flags[0], map_name=flags[1])
    hw = size_pair(size) if size is not None else None
    shapes = [header_shape(f, channels) for f in folder.files]
    if len({s[0] for s in shapes}) > 1:
        i = next(k for k, s in enumerate(shapes) if s[0] != shapes[0][0])
        raise DataError(f"{folder.root} mixes grayscale and colour images ({folder.rel(0)} has {shapes[0][0]} "
                        f"channel(s), {folder.rel(i)} has {shapes[i][0]}); pass channels=1 or 3")
    if hw is None and len({s[1:] for s in shapes}) > 1:
        i = next(k for k, s in enumerate(shapes) if s[1:] != shapes[0][1:])
        raise DataError(f"images in {folder.root} differ in size ({folder.rel(0)} is {shapes[0][1]}×{shapes[0][2]}, "
                        f"{folder.rel(i)} is {shapes[i][1]}×{shapes[i][2]}); pass {flags[2]} to resize them")
    c, h, w = shapes[0][0], *(hw or shapes[0][1:])
    name = folder.root.resolve().name or "images"
    y = plan.labels if plan.labels is not None else [-1] * len(folder)
    classes = plan.mapping.names() if plan.mapping is not None else []
    if stream:
        from .stream import FolderStream

        return FolderStream(folder, torch.tensor(y, dtype=torch.int64), (c, h, w), hw, classes, name, plan.mapping,
                            workers=workers)
    images = torch.empty(len(folder), c, h, w, dtype=torch.uint8)
    for i in range(len(folder)):
        x = folder.load(i)
        images[i] = to_uint8(resize(x, (h, w)) if hw else x)
    return TensorDataset(images, torch.tensor(y, dtype=torch.int64), classes=classes, name=name,
                         class_mapping=plan.mapping)


def save_png(x: torch.Tensor, path: str | os.PathLike) -> None:
    """Write float C×H×W in [0,1] (C = 1 → "L", C = 3 → "RGB") as a lossless 8-bit PNG, atomically.

    Values are stored as round(x*255), so uint8-derived images round-trip exactly.
    """
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"save_png needs a 1×H×W or 3×H×W image, got shape {tuple(x.shape)}")
    x = x.detach().cpu()
    a = (x if x.dtype == torch.uint8 else to_uint8(x)).numpy()
    img = Image.fromarray(np.ascontiguousarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)))
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG")
    except OSError as e:
        raise DataError(f"cannot write {path}: {_one_line(e)}") from None


def resize_dataset(ds: TensorDataset, size: int | tuple[int, int]) -> TensorDataset:
    """``ds`` with every image resized to ``size`` (H, W) (Pillow bilinear, stored as uint8); ``ds`` itself when
    the images already have that size."""
    h, w = size_pair(size)
    if tuple(ds.images.shape[2:]) == (h, w):
        return ds
    images = torch.stack([to_uint8(resize(ds[i][0], (h, w))) for i in range(len(ds))]) if len(ds) else \
        torch.empty(0, ds.images.shape[1], h, w, dtype=torch.uint8)
    return TensorDataset(images, ds.labels, ds.classes, ds.name, getattr(ds, "class_mapping", None))
