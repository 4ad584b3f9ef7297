"""Image data: IDX reading and validation, dataset discovery and fallback, augmentation, image files."""
from __future__ import annotations

import gzip
import hashlib
import shutil

import numpy as np
import pytest
import torch

from archlab.config import ConfigError, from_dict
from archlab.data import images
from archlab.data.images import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_GZ_MD5,
    FASHION_MNIST_RAW_MD5,
    IDX_FILES,
    Augment,
    DataError,
    channel_stats,
    describe_data,
    download_fashion_mnist,
    find_fashion_mnist,
    idx_content_md5,
    load_digits_dataset,
    load_idx_dataset,
    load_image_dataset,
    load_image_file,
    normalize,
    random_crop,
    random_erasing,
    random_hflip,
    read_idx,
    save_image_file,
    split_train_valid,
    write_idx,
)

from conftest import require_path

FMNIST = "/usr/share/datasets/fashion-mnist"


def fmnist_dir():
    return require_path(FMNIST, "dataset-fashion-mnist")


@pytest.fixture(scope="module")
def fashion():
    fmnist_dir()
    return load_idx_dataset("fashion-mnist", FMNIST)


def write_fake_idx_dir(directory, n_train=20, n_test=10, seed=0, gz=True):
    """Four small IDX files in ``directory``; pixel (0, 0) of every image is ``seed`` to tell dirs apart."""
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        x[:, 0, 0] = seed
        y = (torch.arange(n) % 10).to(torch.uint8)
        suffix = ".gz" if gz else ""
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", x)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", y)
    return directory


@pytest.fixture
def no_env_data(monkeypatch, tmp_path):
    """No $ARCHLAB_DATA and no Debian dir: only what a test sets up is found."""
    monkeypatch.delenv("ARCHLAB_DATA", raising=False)
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-here")


# ----------------------------------------------------------------------------- real files

def test_read_real_fashion_mnist(fashion):
    assert fashion.train_x.shape == (60000, 1, 28, 28) and fashion.train_x.dtype == torch.uint8
    assert fashion.test_x.shape == (10000, 1, 28, 28)
    assert fashion.train_y.dtype == torch.int64 and fashion.test_y.shape == (10000,)
    assert fashion.train_y.min() == 0 and fashion.train_y.max() == 9
    assert torch.bincount(fashion.train_y).tolist() == [6000] * 10
    assert torch.bincount(fashion.test_y).tolist() == [1000] * 10
    assert fashion.classes == FASHION_MNIST_CLASSES and fashion.source == FMNIST
    line = describe_data(fashion)
    assert "fashion-mnist" in line and FMNIST in line and "60000" in line and "10000" in line


def test_debian_files_are_the_upstream_files():
    # Debian re-gzipped the files (gzip mtime = package build date), so the .gz bytes differ from the
    # MD5s in Zalando's README, but the uncompressed content is byte-identical to upstream's.
    d = fmnist_dir()
    for name in IDX_FILES:
        gz = d / f"{name}.gz"
        assert idx_content_md5(gz) == FASHION_MNIST_RAW_MD5[name], name
        print(name, "gz md5", hashlib.md5(gz.read_bytes()).hexdigest(), "published", FASHION_MNIST_GZ_MD5[name])


def test_gzip_and_raw_detected_by_magic_not_extension(tmp_path):
    gz = fmnist_dir() / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(gz.read_bytes())
    (tmp_path / "raw.gz").write_bytes(raw)  # misleading names on purpose
    shutil.copy(gz, tmp_path / "compressed.idx")
    a, b = read_idx(tmp_path / "raw.gz"), read_idx(tmp_path / "compressed.idx")
    assert a.shape == (10000, 28, 28) and a.dtype == torch.uint8
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_read_idx_roundtrip(tmp_path, dtype, suffix):
    t = (torch.randn(3, 4, 5) * 100).to(dtype)
    path = write_idx(tmp_path / f"t.idx{suffix}", t)
    back = read_idx(path)
    assert back.dtype == dtype and torch.equal(back, t)


# ----------------------------------------------------------------------------- corrupt files

def test_wrong_magic(tmp_path):
    bad = tmp_path / "bad-magic-idx"
    bad.write_bytes(b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match="bad-magic-idx.*not an IDX file"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00\x07\x01" + b"\x00" * 8)  # unknown type code
    with pytest.raises(DataError, match="bad-magic-idx"):
        read_idx(bad)


def test_truncated_data_names_file_and_byte_counts(tmp_path):
    path = write_idx(tmp_path / "short-images", torch.zeros(10, 28, 28, dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"short-images: truncated.*7840 data bytes.*7740"):
        read_idx(path)
    path.write_bytes(path.read_bytes()[:10])  # cut inside the header
    with pytest.raises(DataError, match="short-images: truncated IDX header"):
        read_idx(path)


def test_truncated_gzip_and_trailing_bytes(tmp_path):
    path = write_idx(tmp_path / "cut.gz", torch.arange(1000, dtype=torch.int32))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="cut.gz: corrupt or truncated gzip"):
        read_idx(path)
    path = write_idx(tmp_path / "long", torch.arange(10, dtype=torch.uint8))
    path.write_bytes(path.read_bytes() + b"xx")
    with pytest.raises(DataError, match="long: trailing bytes"):
        read_idx(path)
    with pytest.raises(DataError, match="missing-file"):
        read_idx(tmp_path / "missing-file")


def test_absurd_idx_headers_refused_before_reading(tmp_path):
    path = tmp_path / "absurd"
    path.write_bytes(b"\x00\x00\x0e\x03" + b"\xff\xff\xff\xff" * 3)  # 2^96 float64s, and no data
    with pytest.raises(DataError, match=r"absurd: header says 4294967295x4294967295x4294967295 float64 = \d+ "
                                        r"data bytes, more than 2147483648; a corrupt header"):
        read_idx(path)
    path.write_bytes(gzip.compress(b"\x00\x00\x08\xff" + b"\x00\x00\x00\x02" * 255))  # 255 dims of 2: 2^255
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert "255-dimensional uint8" in str(e.value) and len(str(e.value)) < 300
    # a gzip bomb: the header promises 784 bytes, the stream holds 64 MiB; decompression stops after 785
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in (1, 28, 28))
                                   + bytes(64 << 20), compresslevel=1))
    with pytest.raises(DataError, match="absurd: trailing bytes after the data"):
        read_idx(path)


def test_corrupt_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "flipped.gz", torch.arange(5000, dtype=torch.int32))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflate stream: zlib.error or a CRC mismatch
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="flipped.gz: "):
        read_idx(path)
    path.write_bytes(b"\x1f\x8b" + b"not gzip at all")
    with pytest.raises(DataError, match="flipped.gz: corrupt or truncated gzip data"):
        read_idx(path)
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path)  # a directory


def test_inconsistent_dataset_files(tmp_path, no_env_data):
    d = write_fake_idx_dir(tmp_path / "d")
    write_idx(d / "train-labels-idx1-ubyte.gz", torch.full((20,), 12, dtype=torch.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: labels must be in 0..9"):
        load_idx_dataset("fashion-mnist", d)
    write_idx(d / "train-labels-idx1-ubyte.gz", torch.zeros(19, dtype=torch.uint8))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: expected uint8 images"):
        load_idx_dataset("fashion-mnist", d)


# ----------------------------------------------------------------------------- discovery and fallback

def test_find_order_data_dir_then_env_then_env_subdir(tmp_path, monkeypatch, no_env_data):
    arg = write_fake_idx_dir(tmp_path / "arg", seed=1)
    env = write_fake_idx_dir(tmp_path / "env", seed=2)
    sub = write_fake_idx_dir(tmp_path / "env" / "fashion-mnist", seed=3, gz=False)  # uncompressed names count
    assert find_fashion_mnist() is None
    monkeypatch.setenv("ARCHLAB_DATA", str(env))
    assert find_fashion_mnist(arg) == arg
    assert find_fashion_mnist() == env
    assert find_fashion_mnist(tmp_path / "empty") == env  # a data_dir without the files is skipped
    (env / "t10k-labels-idx1-ubyte.gz").unlink()  # three of four files is not a dataset
    assert find_fashion_mnist() == sub
    ds = load_idx_dataset("fashion-mnist")
    assert ds.source == str(sub) and ds.train_x.shape == (20, 1, 28, 28) and (ds.train_x[:, 0, 0, 0] == 3).all()
    assert ds.train_y.tolist() == [i % 10 for i in range(20)]
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", arg)  # the Debian dir comes last
    monkeypatch.delenv("ARCHLAB_DATA")
    assert find_fashion_mnist() == arg


def test_mnist_looks_only_in_its_own_dirs(tmp_path, monkeypatch, no_env_data):
    root = write_fake_idx_dir(tmp_path / "data", seed=4)  # Fashion-MNIST files at the root: not MNIST
    monkeypatch.setenv("ARCHLAB_DATA", str(root))
    with pytest.raises(DataError, match=r"mnist not found: .*data[/\\]mnist"):
        load_idx_dataset("mnist")
    write_fake_idx_dir(root / "mnist", seed=5)
    ds = load_idx_dataset("mnist")
    assert ds.classes == tuple("0123456789") and (ds.train_x[:, 0, 0, 0] == 5).all()


def test_missing_fashion_mnist_says_where_and_how(tmp_path, no_env_data):
    with pytest.raises(DataError) as e:
        load_idx_dataset("fashion-mnist", tmp_path / "nowhere")
    msg = str(e.value)
    assert "nowhere" in msg and "no-debian-here" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "archlab data prepare fashion-mnist --download" in msg
    with pytest.raises(DataError):
        load_image_dataset("fashion-mnist", tmp_path / "nowhere", fallback=False)


def test_fallback_to_digits(tmp_path, no_env_data):
    with pytest.warns(UserWarning, match="falling back"):
        ds = load_image_dataset("fashion-mnist", tmp_path / "nowhere")
    assert ds.name == "digits" and "fallback" in ds.source and "fashion-mnist" in ds.source
    assert ds.train_x.shape[1:] == (1, 8, 8)
    # corrupt data is an error, never a silent fallback
    d = write_fake_idx_dir(tmp_path / "d")
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_image_dataset("fashion-mnist", d)


def test_digits_deterministic_and_stratified():
    a, b = load_digits_dataset(), load_image_dataset("digits")
    assert a.name == "digits" and a.source == images.DIGITS_SOURCE
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_x.dtype == torch.uint8 and a.train_x.max() == 255 and a.train_x.min() == 0
    assert len(a.train_x) + len(a.test_x) == 1797 and abs(len(a.test_x) - 0.2 * 1797) <= 10
    counts = torch.bincount(a.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    c = load_digits_dataset(seed=1)
    assert not torch.equal(a.test_y, c.test_y) or not torch.equal(a.test_x, c.test_x)


def test_split_train_valid():
    y = torch.arange(1000) % 10
    x = torch.arange(1000)
    tx, ty, vx, vy = split_train_valid(x, y, 0.1, seed=0)
    assert len(vx) == 100 and torch.bincount(vy).tolist() == [10] * 10
    assert set(tx.tolist()).isdisjoint(vx.tolist()) and len(tx) + len(vx) == 1000
    assert torch.equal(vx, split_train_valid(x, y, 0.1, seed=0)[2])
    assert not torch.equal(vx, split_train_valid(x, y, 0.1, seed=1)[2])


def test_download_verifies_and_writes_atomically(tmp_path):
    # file:// exercises the real urllib path without a network
    out = download_fashion_mnist(tmp_path / "dl", base_url=fmnist_dir().as_uri())
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.gz" for n in IDX_FILES)
    assert find_fashion_mnist(out) == out
    fake = write_fake_idx_dir(tmp_path / "fake")
    with pytest.raises(DataError, match="checksum mismatch"):
        download_fashion_mnist(tmp_path / "dl2", base_url=fake.as_uri())
    assert list((tmp_path / "dl2").iterdir()) == []  # nothing half-written
    with pytest.raises(DataError, match="download failed"):
        download_fashion_mnist(tmp_path / "dl3", base_url=(tmp_path / "none").as_uri())


# ----------------------------------------------------------------------------- normalization

def test_channel_stats_and_normalize():
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    mean, std = channel_stats(x)
    xf = x.double() / 255
    assert mean[0] == pytest.approx(xf.mean().item(), abs=1e-9)
    assert std[0] == pytest.approx(xf.std(unbiased=False).item(), abs=1e-9)
    assert channel_stats(xf)[0][0] == pytest.approx(mean[0])
    z = normalize(x, mean, std)
    assert z.dtype == torch.float32 and abs(z.mean().item()) < 1e-5 and z.std().item() == pytest.approx(1, abs=1e-3)


# ----------------------------------------------------------------------------- augmentation

def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_crop():
    x = torch.rand(64, 2, 28, 28)
    assert random_crop(x, 0, gen()) is x
    out = random_crop(x, 3, gen())
    assert out.shape == x.shape and torch.equal(out, random_crop(x, 3, gen()))
    assert not torch.equal(out, random_crop(x, 3, gen(1)))
    # every output is exactly one window of the zero-padded input; collect the shifts
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    shifts = []
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(7) for dx in range(7) if torch.equal(out[i], padded[i, :, dy:dy + 28, dx:dx + 28])]
        assert len(found) == 1
        shifts.append(found[0])
    assert len(set(shifts)) > 10  # offsets vary per image
    assert random_crop(torch.ones(8, 1, 4, 4, dtype=torch.uint8), 2, gen(), fill=7).dtype == torch.uint8


def test_random_crop_moves_content():
    x = torch.zeros(256, 1, 28, 28)
    x[:, :, 14, 14] = 1
    out = random_crop(x, 4, gen())
    ys, xs = torch.nonzero(out[:, 0] == 1, as_tuple=True)[1:]
    assert len(ys) == 256  # content near the centre is never cropped away
    assert (ys - 14).abs().max() <= 4 and (xs - 14).abs().max() <= 4
    assert (ys != 14).float().mean() > 0.5


def test_random_hflip():
    x = torch.rand(100, 1, 28, 28)
    assert torch.equal(random_hflip(x, 1.0, gen()), torch.flip(x, dims=[-1]))
    assert torch.equal(random_hflip(x, 0.0, gen()), x)
    out = random_hflip(x, 0.5, gen())
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    assert 25 < flipped.sum() < 75 and torch.equal(out, random_hflip(x, 0.5, gen()))


def test_random_erasing():
    n, h, w = 500, 28, 28
    x = torch.ones(n, 1, h, w)
    assert torch.equal(random_erasing(x, 0.0, gen()), x)
    out = random_erasing(x, 1.0, gen())
    assert out.shape == x.shape and torch.equal(out, random_erasing(x, 1.0, gen()))
    erased = out[:, 0] == 0
    area = erased.sum((1, 2)).float()
    assert area.min() >= 0.02 * h * w * 0.7 and area.max() <= 0.33 * h * w * 1.1
    assert area.std() > 20  # areas spread over the range, not one fixed size
    for m in erased:  # a filled rectangle: its bounding box is entirely erased
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert m[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
    half = random_erasing(x, 0.5, gen(), value=-1.0)
    hit = (half == -1).flatten(1).any(1)
    assert 200 < hit.sum() < 300 and set(half.unique().tolist()) == {-1.0, 1.0}


def test_augment_config_and_resume():
    aug = from_dict(Augment, {"crop_padding": 2, "hflip": True, "erasing": 0.25})
    with pytest.raises(ConfigError, match="erasing"):
        from_dict(Augment, {"erasing": 1.5})
    with pytest.raises(ConfigError, match="crop_padding"):
        from_dict(Augment, {"crop_padding": -1})
    assert aug.enabled and not Augment().enabled
    x = torch.rand(32, 1, 28, 28)
    assert torch.equal(Augment()(x, gen()), x)
    g = gen(3)
    aug(x, g)
    state = g.get_state()
    a = aug(x, g)
    g.set_state(state)  # a resumed run replays the same augmentation
    assert torch.equal(a, aug(x, g)) and a.shape == x.shape
    mean, std = (0.2860,), (0.3530,)
    assert aug.with_fill(mean, std).fill == pytest.approx(-0.2860 / 0.3530)
    z = normalize(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), mean, std)
    assert torch.allclose(aug.with_fill(mean, std)(z, gen()), z)  # black padding stays black


def test_tta_views_are_every_training_shift_with_and_without_mirror():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 1, 3] = 1.0  # one bright pixel (row 1, column 3)
    aug = Augment(crop_padding=2, hflip=True, fill=-1.0)
    views = aug.views(x)
    assert len(views) == 18 and torch.equal(views[0], x)
    bright = [tuple(torch.nonzero(v[0, 0] == 1).flatten().tolist()) for v in views]
    # content moves by one pixel the other way to each crop offset (dy, dx); the mirror flips the column
    shifted = [(1 - dy, 3 - dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    assert bright == [(1, 3), *shifted, *[(r, 4 - c) for r, c in [(1, 3), *shifted]]]
    assert views[1][0, 0, 0].eq(-1).all() and views[1][0, 0, :, 0].eq(-1).all()  # the border comes in black
    assert len(Augment(hflip=True).views(x)) == 2 and len(Augment(crop_padding=1).views(x)) == 9


# ----------------------------------------------------------------------------- image files

def test_image_file_roundtrip(fashion, tmp_path):
    for i in (0, 1, 2, 3):
        img = fashion.test_x[i]
        path = save_image_file(img, tmp_path / f"test{i}.png")
        assert torch.equal(load_image_file(path), img)  # dark borders: no spurious inversion


def test_image_file_white_background_is_inverted_and_fitted(tmp_path):
    from PIL import Image

    photo = np.full((80, 120, 3), 250, dtype=np.uint8)  # a wide photo of a dark item on white
    photo[20:60, 30:90] = (40, 20, 10)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
    img = load_image_file(tmp_path / "photo.jpg")
    assert img.shape == (1, 28, 28) and img.dtype == torch.uint8
    assert img[0, 0].max() < 30 and img[0, -1].max() < 30  # padding above and below the fitted 28x19
    assert img[0, 14, 14] > 200  # the dark item became bright
    assert img[0, 14, 1] < 30  # the white background became black
    kept = load_image_file(tmp_path / "photo.jpg", invert=False)
    assert kept[0, 14, 1] > 220 and kept[0, 14, 14] < 60
    assert load_image_file(tmp_path / "photo.jpg", size=(16, 32)).shape == (1, 16, 32)


def test_transparent_png_gets_black_background(tmp_path):
    from PIL import Image

    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[8:20, 8:20] = (30, 30, 30, 255)  # dark opaque item, the rest fully transparent
    Image.fromarray(rgba).save(tmp_path / "item.png")
    img = load_image_file(tmp_path / "item.png")
    assert img[0, 0, 0] == 0 and img[0, 14, 14] == 225


def test_corrupt_image_file(tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is text, not a PNG")
    with pytest.raises(DataError, match="not-an-image.png: not a readable image"):
        load_image_file(bad)
    good = save_image_file(torch.randint(0, 256, (1, 64, 64), dtype=torch.uint8), tmp_path / "cut.png")
    good.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match="cut.png"):
        load_image_file(good)
    with pytest.raises(DataError, match="absent.png: no such image file"):
        load_image_file(tmp_path / "absent.png")


def _png_header_only(path, width, height):
    """A PNG that declares width x height 1-bit pixels and holds none: what a decompression bomb's header says."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_image_file_modes_load_like_the_8bit_image(fashion, tmp_path):
    """16-bit, palette, alpha, 1-bit and CMYK copies of real test images load equal to the 8-bit one
    (16-bit: within 1 level, as 8 bits can hold no more); 65535 is white, not clipped to 255."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        x = fashion.test_x[i, 0].numpy()
        im = Image.fromarray(x)
        noise = rng.integers(-128, 129, x.shape)  # the low byte of a real 16-bit scan
        x16 = np.clip(x.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)
        Image.fromarray(x16).save(tmp_path / "g16.png")  # opens as I;16
        Image.frombytes("I;16B", im.size, x16.astype(">u2").tobytes()).save(tmp_path / "g16b.tif")
        Image.fromarray(x16).save(tmp_path / "g16.pgm")  # opens as 32-bit "I"
        for name in ("g16.png", "g16b.tif", "g16.pgm"):
            got = load_image_file(tmp_path / name)[0].numpy().astype(int)
            assert np.abs(got - x).max() <= 1, name
        im.convert("P").save(tmp_path / "p.png")
        Image.fromarray(np.dstack([x, x, x, np.full_like(x, 255)])).save(tmp_path / "rgba.png")
        Image.fromarray(np.dstack([x, np.full_like(x, 255)]), "LA").save(tmp_path / "la.png")
        im.convert("CMYK").save(tmp_path / "cmyk.tif")
        for name in ("p.png", "rgba.png", "la.png", "cmyk.tif"):
            assert np.array_equal(load_image_file(tmp_path / name)[0].numpy(), x), name
        Image.fromarray(x > 127).save(tmp_path / "bw.png")  # mode "1"
        assert np.array_equal(load_image_file(tmp_path / "bw.png")[0].numpy(), (x > 127) * 255)


def test_image_file_transparency_is_black_background(fashion, tmp_path):
    """Transparent pixels become the dataset's black background whether or not the colours are inverted."""
    from PIL import Image

    x = fashion.test_x[0, 0].numpy()
    alpha = np.where(x > 0, 255, 0).astype(np.uint8)  # the black background cut away
    Image.fromarray(np.dstack([x, x, x, alpha])).save(tmp_path / "cut.png")
    assert np.array_equal(load_image_file(tmp_path / "cut.png", invert=False)[0].numpy(), x)
    # invert="auto" counts transparency as a product photo's white: the cut-out is inverted, background stays black
    auto = load_image_file(tmp_path / "cut.png")[0].numpy()
    assert np.array_equal(auto, np.where(x > 0, 255 - x, 0))
    im = Image.fromarray(x).convert("P")
    im.save(tmp_path / "trns.png", transparency=0)  # palette entry 0 (black) transparent
    assert np.array_equal(load_image_file(tmp_path / "trns.png", invert=False)[0].numpy(), x)
    half = np.dstack([np.full_like(x, 200), np.full_like(x, 128)])  # light gray, half opaque
    Image.fromarray(half, "LA").save(tmp_path / "half.png")
    assert load_image_file(tmp_path / "half.png", invert=False)[0, 5, 5] == round(200 * 128 / 255)
    assert load_image_file(tmp_path / "half.png", invert=True)[0, 5, 5] == round(55 * 128 / 255)


def test_image_file_exif_orientation(tmp_path):
    from PIL import Image

    x = np.arange(20 * 28, dtype=np.uint8).reshape(20, 28) % 97  # dark, not square, no symmetry
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored rows are the picture's right-hand column -> turn 90° clockwise
    Image.fromarray(x).save(tmp_path / "turned.png", exif=exif)
    got = load_image_file(tmp_path / "turned.png", size=(28, 20))[0].numpy()
    assert np.array_equal(got, np.rot90(x, k=-1))


def test_bad_image_files(tmp_path):
    import warnings

    def error(path):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no DecompressionBombWarning either: refused, not warned about
            with pytest.raises(DataError) as e:
                load_image_file(path)
        assert str(e.value).startswith(f"{path}: ") and len(str(e.value)) < 300 and "\n" not in str(e.value)
        return str(e.value)

    assert "decompression bomb" in error(_png_header_only(tmp_path / "bomb.png", 100_000, 100_000))
    assert "10000x10000 pixels is more than" in error(_png_header_only(tmp_path / "big.png", 10_000, 10_000))
    assert "not a readable image" in error(tmp_path)  # a directory
    (tmp_path / "empty.png").write_bytes(b"")
    assert "not a readable image" in error(tmp_path / "empty.png")
    small = _png_header_only(tmp_path / "nodata.png", 28, 28)  # header fine, pixel data missing
    assert "not a readable image" in error(small)
