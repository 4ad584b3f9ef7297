"""Image classification data: IDX files (Fashion-MNIST, MNIST), the bundled scikit-learn digits as a
fallback, batched augmentation as torch ops, and single-image files for inference.

Images are kept as uint8 tensors (N, 1, H, W) until a batch is used; ``normalize`` turns a batch into
float. Every random op draws from an explicit ``torch.Generator`` and draws the same number of
values whatever its probability, so saving the generator state is enough to resume a run exactly.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import tempfile
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError

# ----------------------------------------------------------------------------- IDX files

# IDX type codes -> big-endian numpy dtype (the format stores multi-byte values big-endian)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_TORCH_TO_IDX = {torch.uint8: 0x08, torch.int8: 0x09, torch.int16: 0x0B, torch.int32: 0x0C,
                 torch.float32: 0x0D, torch.float64: 0x0E}
_GZIP_MAGIC = b"\x1f\x8b"


MAX_IDX_BYTES = 1 << 31  # 2 GiB of data, 4x EMNIST's largest file; a header asking more is corrupt


def _read_exactly(f, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise DataError(f"{path}: truncated {what}: needs {n} bytes, file has {len(data)}")
    return data


def _read_idx_stream(f, path: Path) -> torch.Tensor:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
        raise DataError(f"{path}: not an IDX file (magic number {magic.hex() or 'missing'}; expected "
                        f"00 00, a type code in {[hex(c) for c in _IDX_DTYPES]}, and a dimension count >= 1)")
    ndim = magic[3]
    head = _read_exactly(f, 4 * ndim, path, f"IDX header: {ndim} dimensions")
    dims = tuple(int.from_bytes(head[4 * i: 4 * i + 4], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    shape = "x".join(map(str, dims)) if ndim <= 8 else f"{ndim}-dimensional"
    expected = math.prod(dims) * dtype.itemsize
    if expected > MAX_IDX_BYTES:  # refused before reading (or allocating) anything
        raise DataError(f"{path}: header says {shape} {dtype.name} = {expected} data bytes, more than "
                        f"{MAX_IDX_BYTES}; a corrupt header")
    chunks, left = [], expected
    while left:  # in chunks, so memory grows with the data that is there, not with what the header claims
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    body = b"".join(chunks)
    if len(body) < expected:
        raise DataError(f"{path}: truncated: header says {shape} {dtype.name} = {expected} data bytes, "
                        f"file has {len(body)}")
    if f.read(1):
        raise DataError(f"{path}: trailing bytes after the data: header says {shape} {dtype.name} = "
                        f"{expected} data bytes, file has more")
    # astype copies into a writable, native-endian array that torch can own
    array = np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))
    return torch.from_numpy(array)


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (gzipped or raw, told apart by magic bytes) into a tensor of its dtype."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(2) == _GZIP_MAGIC:
                f.seek(0)
                with gzip.GzipFile(fileobj=f) as g:  # streamed: a gzip bomb stops at the header's size
                    return _read_idx_stream(g, path)
            f.seek(0)
            return _read_idx_stream(f, path)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e.strerror or e})") from None


def write_idx(path: str | Path, tensor: torch.Tensor) -> Path:
    """Write ``tensor`` as an IDX file, gzipped when the name ends in .gz (for tests and data prep)."""
    path, tensor = Path(path), torch.as_tensor(tensor)
    if tensor.dtype not in _TORCH_TO_IDX or tensor.dim() == 0:
        raise ValueError(f"IDX stores 1+ dimensional {list(_TORCH_TO_IDX)}, got {tensor.dtype} {tuple(tensor.shape)}")
    code = _TORCH_TO_IDX[tensor.dtype]
    header = bytes([0, 0, code, tensor.dim()]) + b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    data = header + tensor.cpu().numpy().astype(_IDX_DTYPES[code]).tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


# ----------------------------------------------------------------------------- datasets

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))
IDX_DATASETS = {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DIGITS_SOURCE = "scikit-learn digits (bundled)"

# Upstream Fashion-MNIST (github.com/zalandoresearch/fashion-mnist, data/fashion/). The README
# publishes the MD5 of each .gz; we verify the *uncompressed* content instead (its SHA256, and
# MD5 as listed by several upstream-derived loaders), because mirrors and distributions re-gzip:
# Debian's dataset-fashion-mnist .gz files have other MD5s but identical content.
FASHION_MNIST_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
FASHION_MNIST_GZ_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
FASHION_MNIST_RAW_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


@dataclass
class ImageDataset:
    """A train/test image classification set: x is uint8 (N, 1, H, W), y is int64 (N,)."""
    name: str
    classes: tuple[str, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str  # where it came from, for reports: a directory, or DIGITS_SOURCE


def _idx_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (each gzipped or not), or None if any is missing."""
    found = {}
    for name in IDX_FILES:
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            return None
    return found


def _candidate_dirs(name: str, data_dir: str | Path | None) -> list[Path]:
    dirs = [Path(data_dir)] if data_dir is not None else []
    env = os.environ.get("ARCHLAB_DATA")
    if name == "fashion-mnist":
        dirs += [Path(env), Path(env) / name] if env else []
        dirs.append(DEBIAN_FASHION_MNIST)
    else:  # other IDX sets share file names with Fashion-MNIST, so only a dir named after them counts
        dirs += [Path(env) / name] if env else []
    return dirs


def _find_idx_dir(name: str, data_dir: str | Path | None) -> Path | None:
    return next((d for d in _candidate_dirs(name, data_dir) if _idx_files(d)), None)


def find_fashion_mnist(data_dir: str | Path | None = None) -> Path | None:
    """First dir holding the four Fashion-MNIST files: data_dir, $ARCHLAB_DATA, $ARCHLAB_DATA/fashion-mnist,
    /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist)."""
    return _find_idx_dir("fashion-mnist", data_dir)


def load_idx_dataset(name: str, data_dir: str | Path | None = None) -> ImageDataset:
    """Load 'fashion-mnist' or 'mnist' from IDX files (see ``find_fashion_mnist`` for where it looks)."""
    if name not in IDX_DATASETS:
        raise ConfigError(f"unknown IDX dataset {name!r}; choose one of {', '.join(IDX_DATASETS)}")
    directory = _find_idx_dir(name, data_dir)
    if directory is None:
        looked = ", ".join(str(d) for d in _candidate_dirs(name, data_dir)) or "(nowhere: no data_dir, $ARCHLAB_DATA unset)"
        how = ("apt-get install dataset-fashion-mnist, or run `archlab data prepare fashion-mnist --download`"
               if name == "fashion-mnist" else f"put the four files in $ARCHLAB_DATA/{name} or pass data_dir")
        raise DataError(f"{name} not found: looked for {', '.join(IDX_FILES)} (.gz or not) in {looked}. To get it: {how}")
    files = _idx_files(directory)
    tensors = {k: read_idx(p) for k, p in files.items()}
    splits = []
    for split in ("train", "t10k"):
        x, y = tensors[f"{split}-images-idx3-ubyte"], tensors[f"{split}-labels-idx1-ubyte"]
        if x.dtype != torch.uint8 or x.dim() != 3 or y.dim() != 1 or len(x) != len(y):
            raise DataError(f"{files[f'{split}-images-idx3-ubyte']}: expected uint8 images (N, H, W) with N labels, got "
                            f"{x.dtype} {tuple(x.shape)} and labels {tuple(y.shape)}")
        y = y.long()
        if len(y) and (y.min() < 0 or y.max() >= len(IDX_DATASETS[name])):
            raise DataError(f"{files[f'{split}-labels-idx1-ubyte']}: labels must be in 0..{len(IDX_DATASETS[name]) - 1}, "
                            f"found {y.min().item()}..{y.max().item()}")
        splits += [x.unsqueeze(1), y]
    return ImageDataset(name, IDX_DATASETS[name], *splits, source=str(directory))


def _stratified_split(y: torch.Tensor, frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices, sorted; each class gives round(frac * its count) to the held-out part."""
    g = torch.Generator().manual_seed(seed)
    held = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        held.append(idx[torch.randperm(len(idx), generator=g)[: round(frac * len(idx))]])
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.cat(held)] = True
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()


def split_train_valid(x: torch.Tensor, y: torch.Tensor, valid_frac: float = 0.1,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic stratified validation split of the training set: (train_x, train_y, valid_x, valid_y)."""
    if not 0 < valid_frac < 1:
        raise ValueError(f"valid_frac must be in (0, 1), got {valid_frac}")
    keep, held = _stratified_split(y, valid_frac, seed)
    return x[keep], y[keep], x[held], y[held]


def load_digits_dataset(test_frac: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), as uint8 0..255, stratified split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)  # values are 0..16
    y = torch.from_numpy(digits.target).long()
    train, test = _stratified_split(y, test_frac, seed)
    return ImageDataset("digits", MNIST_CLASSES, x[train], y[train], x[test], y[test], DIGITS_SOURCE)


def load_image_dataset(name: str = "fashion-mnist", data_dir: str | Path | None = None,
                       fallback: bool = True) -> ImageDataset:
    """'fashion-mnist', 'mnist' or 'digits'. Missing IDX data falls back to digits when ``fallback``
    (the result's name is 'digits' and its source says why); corrupt IDX data always raises."""
    if name == "digits":
        return load_digits_dataset()
    if name not in IDX_DATASETS:
        raise ConfigError(f"unknown image dataset {name!r}; choose one of {', '.join([*IDX_DATASETS, 'digits'])}")
    if fallback and _find_idx_dir(name, data_dir) is None:
        looked = ", ".join(str(d) for d in _candidate_dirs(name, data_dir))
        warnings.warn(f"{name} not found (looked in {looked}); falling back to {DIGITS_SOURCE}", stacklevel=2)
        ds = load_digits_dataset()
        ds.source = f"{DIGITS_SOURCE}; fallback: {name} not found in {looked}"
        return ds
    return load_idx_dataset(name, data_dir)


def describe_data(ds: ImageDataset) -> str:
    """One line for logs: name, source, sizes."""
    c, h, w = ds.train_x.shape[1:]
    return (f"{ds.name} from {ds.source}: train {len(ds.train_x)}, test {len(ds.test_x)}, "
            f"{c}x{h}x{w} uint8, {len(ds.classes)} classes")


def idx_content_md5(path: str | Path) -> str:
    """MD5 of the uncompressed content of an IDX file, comparable across differently gzipped copies."""
    data = Path(path).read_bytes()
    return hashlib.md5(gzip.decompress(data) if data[:2] == _GZIP_MAGIC else data).hexdigest()


def download_fashion_mnist(out_dir: str | Path, base_url: str = FASHION_MNIST_URL, timeout: float = 60.0) -> Path:
    """Download the four Fashion-MNIST .gz files into ``out_dir``, verifying each file's content SHA256.
    Files already present and valid are kept. Each file appears atomically (temp file + rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, sha256 in FASHION_MNIST_RAW_SHA256.items():
        dest = out_dir / f"{name}.gz"
        if dest.is_file() and _content_sha256(dest) == sha256:
            continue
        url = base_url.rstrip("/") + f"/{name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except OSError as e:  # URLError, HTTPError and timeouts are all OSErrors
            raise DataError(f"{url}: download failed ({e}); without a network, install the Debian package "
                            f"dataset-fashion-mnist instead") from None
        try:
            got = hashlib.sha256(gzip.decompress(data)).hexdigest()
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{url}: not a valid gzip file ({e})") from None
        if got != sha256:
            raise DataError(f"{url}: checksum mismatch: content SHA256 {got}, expected {sha256}")
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return out_dir


def _content_sha256(path: Path) -> str | None:
    try:
        data = path.read_bytes()
        return hashlib.sha256(gzip.decompress(data) if data[:2] == _GZIP_MAGIC else data).hexdigest()
    except (OSError, EOFError, zlib.error):
        return None


# ----------------------------------------------------------------------------- normalization

def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of a batch (N, C, H, W); uint8 is measured on the 0..1 scale ``normalize`` uses."""
    if x.dtype == torch.uint8:
        # a histogram per channel is exact and needs no float copy of the whole training set
        counts = torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])]).double()
        v = torch.arange(256, dtype=torch.float64) / 255
        n = counts.sum(1)
        mean = (counts * v).sum(1) / n
        var = (counts * v ** 2).sum(1) / n - mean ** 2
    else:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
        mean, var = flat.mean(1), flat.var(1, unbiased=False)
    return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().tolist())


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (x / 255 - mean) / std, per channel."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------- augmentation

def _uniform(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # draw on the generator's device so results do not depend on where the batch lives
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator, fill: float = 0.0) -> torch.Tensor:
    """Pad each side by ``padding`` with ``fill``, then crop back to H x W at a random offset per image."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, value=fill)
    dy = (_uniform(n, generator, x.device) * (2 * padding + 1)).long()
    dx = (_uniform(n, generator, x.device) * (2 * padding + 1)).long()
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]  # one gather for the whole batch


def random_hflip(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = _uniform(len(x), generator, x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_erasing(x: torch.Tensor, p: float, generator: torch.Generator, scale: tuple[float, float] = (0.02, 0.33),
                   ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> torch.Tensor:
    """With probability ``p`` per image, set a random rectangle to ``value``: its area is a uniform
    fraction in ``scale`` of the image, its aspect (h / w) log-uniform in ``ratio`` (as in Zhong et al. 2017)."""
    n, _, h, w = x.shape
    u = torch.stack([_uniform(n, generator, x.device) for _ in range(5)])
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[1])
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[2])
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = (area / eh).round().clamp(1, w)  # from the clamped height, so the area stays close to the target
    top = (u[3] * (h - eh + 1)).floor()
    left = (u[4] * (w - ew + 1)).floor()
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    in_rows = (ys >= top[:, None]) & (ys < (top + eh)[:, None])  # (N, H)
    in_cols = (xs >= left[:, None]) & (xs < (left + ew)[:, None])  # (N, W)
    mask = (u[0] < p)[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]
    return x.masked_fill(mask[:, None], value)


@dataclass
class Augment:
    """Training-time augmentation config, callable on a batch: crop (pad + random crop), horizontal
    flip, random erasing. ``fill`` is the value of a black pixel in the batch's units (after
    ``normalize``: -mean / std), used for crop padding and erased rectangles."""
    crop_padding: int = 0
    hflip: bool = False
    # with hflip: each image is mirrored in every other epoch (in which half first: a coin per image) rather than
    # by a coin per step, so no image goes unmirrored (or mirrored) for epochs on end (airbench: 8% fewer epochs)
    alternate_flip: bool = False
    erasing: float = 0.0  # probability per image
    fill: float = 0.0

    def validate(self) -> None:
        if self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.alternate_flip and not self.hflip:
            raise ConfigError("alternate_flip alternates the mirror of hflip; set hflip: true, or alternate_flip: false")
        if not 0 <= self.erasing <= 1:
            raise ConfigError(f"erasing is a probability in [0, 1], got {self.erasing}")

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.erasing > 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator, mirror: torch.Tensor | None = None) -> torch.Tensor:
        """`mirror`: which images hflip mirrors (bool, one per image), else a coin per image."""
        x = random_crop(x, self.crop_padding, generator, fill=self.fill)
        if self.hflip:
            x = random_hflip(x, 0.5, generator) if mirror is None else torch.where(mirror[:, None, None, None],
                                                                                     x.flip(-1), x)
        if self.erasing > 0:
            x = random_erasing(x, self.erasing, generator, value=self.fill)
        return x

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Fixed versions of the batch for test-time augmentation, every combination of the training changes:
        the images and their 1-pixel shifts in the 8 directions (with crop_padding), each also mirrored (with
        hflip) — up to 18 views (+0.2% validation accuracy over the 4 straight shifts and one mirror)."""
        h, w = x.shape[-2:]
        out = [x]
        if self.crop_padding > 0:
            padded = F.pad(x, (1,) * 4, value=self.fill)
            out += [padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
        if self.hflip:
            out += [v.flip(-1) for v in out]
        return out

    def with_fill(self, mean: tuple[float, ...], std: tuple[float, ...]) -> Augment:
        """A copy whose fill is black after ``normalize(x, mean, std)`` (first channel: these sets are grayscale)."""
        return dataclasses.replace(self, fill=-mean[0] / std[0])


# ----------------------------------------------------------------------------- single image files

MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own threshold for a decompression bomb (~300 MB as RGBA)


def _gray_and_alpha(img) -> tuple[np.ndarray, np.ndarray | None]:
    """Luminance in 0..255 and opacity in 0..1 (None when the image has no transparency), float32."""
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grayscale (PNG, TIFF, PGM; Pillow opens some as 32-bit "I"): 65535 is white. Pillow's
        # convert("L") clips at 255, which would turn almost every pixel white, so scale instead.
        return np.clip(np.asarray(img, dtype=np.float32) / 257, 0, 255), None
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info:
        la = img.convert("RGBA").convert("LA")  # via RGBA: the path that applies a palette's transparency
        arr = np.asarray(la, dtype=np.float32)
        return arr[..., 0], arr[..., 1] / 255
    return np.asarray(img.convert("L"), dtype=np.float32), None  # 1-bit, palette, RGB, CMYK, YCbCr, F


def load_image_file(path: str | Path, size: tuple[int, int] = (28, 28),
                    invert: bool | Literal["auto"] = "auto") -> torch.Tensor:
    """Any image Pillow reads -> uint8 (1, H, W) for ``size`` = (H, W), styled like Fashion-MNIST: grayscale,
    fitted into the box keeping its aspect and centred on black, a light object on a dark background.
    invert='auto' inverts when most border pixels are bright (an item photographed on white); a
    transparent pixel counts as white there, since cut-outs are cut from such photos."""
    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with warnings.catch_warnings():  # between 1x and 2x its limit Pillow only warns; we refuse below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise DataError(f"{path}: {img.width}x{img.height} pixels is more than {MAX_IMAGE_PIXELS}; "
                                f"refused as a possible decompression bomb (scale the image down first)")
            img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
            gray, alpha = _gray_and_alpha(img)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except Image.DecompressionBombError:
        raise DataError(f"{path}: more than {2 * MAX_IMAGE_PIXELS} pixels; refused as a possible "
                        f"decompression bomb") from None
    except Exception as e:  # Pillow's decoders raise many types on bad bytes (OSError, SyntaxError, struct.error...)
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {str(e)[:120]})") from None
    if invert == "auto":
        shown = gray if alpha is None else gray * alpha + 255 * (1 - alpha)  # as if on white
        border = np.concatenate([shown[0], shown[-1], shown[:, 0], shown[:, -1]])
        invert = bool((border > 127).mean() > 0.5)
    if invert:
        gray = 255 - gray
    if alpha is not None:
        # Transparent pixels are background, and Fashion-MNIST's background is black (0): its images
        # are negated product photos. Compositing on black after the inversion keeps them black
        # whichever way `invert` goes (on white, then inverted, is the same thing).
        gray = gray * alpha
    img = Image.fromarray(np.round(gray).astype(np.uint8))
    (H, W), (w, h) = size, img.size
    if (h, w) != (H, W):
        scale = min(H / h, W / w)
        fitted = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
        img = Image.new("L", (W, H), 0)
        img.paste(fitted, ((W - fitted.width) // 2, (H - fitted.height) // 2))
    return torch.from_numpy(np.array(img, dtype=np.uint8)).unsqueeze(0)


def save_image_file(image: torch.Tensor, path: str | Path) -> Path:
    """Save a uint8 (1, H, W) or (H, W) image; the format follows the extension (PNG is lossless)."""
    from PIL import Image

    if image.dtype != torch.uint8 or image.dim() not in (2, 3) or (image.dim() == 3 and image.shape[0] != 1):
        raise ValueError(f"expected a uint8 (1, H, W) image, got {image.dtype} {tuple(image.shape)}")
    path = Path(path)
    Image.fromarray(image.reshape(image.shape[-2:]).cpu().numpy()).save(path)
    return path
