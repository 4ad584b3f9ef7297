"""Property tests: whatever bytes or data a user hands the config loader or a data reader, the result is
success or one ConfigError/DataError, never another exception. Hypothesis runs derandomized (the same
examples every run), 200 per test, on random input and on small mutations of a valid file."""
from __future__ import annotations

import gzip
import io
import json
import string

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archlab.config import ConfigError, from_dict, load_yaml, loads_yaml
from archlab.data import images
from archlab.data.text import DataError, read_fortune_file, read_labelled, read_parallel
from archlab.data.tokenizer import Tokenizer
from archlab.tasks.run import TOP_KEYS, load_run_config
from archlab.train.config import TrainConfig

FUZZ = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- mutations of a valid file

# (position, kind, bytes): position is taken modulo the length, so every edit lands inside the file
EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.sampled_from(["flip", "insert", "delete", "replace"]),
                           st.binary(min_size=1, max_size=8)), min_size=1, max_size=6)


def mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for pos, kind, chunk in edits:
        i = pos % (len(buf) + 1)
        if kind == "flip" and i < len(buf):
            buf[i] ^= chunk[0] or 0x80
        elif kind == "insert":
            buf[i:i] = chunk
        elif kind == "delete":
            del buf[i:i + len(chunk)]
        else:
            buf[i:i + len(chunk)] = chunk
    return bytes(buf)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def put(workdir, name: str, data: bytes):
    path = workdir / name
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- configs

FIELDS = [*TOP_KEYS, *TrainConfig.__dataclass_fields__]
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-(10 ** 400), 10 ** 400)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(["nan", "inf", "-inf", "1e-3", "adamw", "cosine", "bf16", "lora", "", "1e999"])
           | st.text(max_size=20))
KEYS = st.sampled_from(FIELDS) | st.text(max_size=10) | st.integers(-5, 5) | st.none()
PLAIN = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
                     max_leaves=30)


def build_or_config_error(cls, data) -> None:
    try:
        from_dict(cls, data, "")
    except ConfigError as e:
        assert len(str(e)) < 600, str(e)


def recipe_or_config_error(data) -> None:
    """A whole recipe (task, model, data, train, fine-tuning): it loads, or one short ConfigError."""
    try:
        load_run_config(data) if isinstance(data, dict) else load_run_config({"task": data})
    except ConfigError as e:
        assert len(str(e)) < 600, str(e)


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), PLAIN, max_size=8))
def test_train_config_from_random_data(data):
    build_or_config_error(TrainConfig, data)


@FUZZ
@given(PLAIN, st.dictionaries(st.sampled_from(list(TrainConfig.__dataclass_fields__)), PLAIN, max_size=6),
       st.sampled_from(["full", "frozen", "lora", 3, None]), PLAIN)
def test_run_config_from_random_data(anything, train, mode, lora):
    recipe_or_config_error(anything)
    run = {"task": "image_classification", "model": {"family": "cnn"}, "train": {"epochs": 1, **train},
           "finetune": {"mode": mode, "lora": lora}}
    recipe_or_config_error(run)


VALID_YAML = b"""# a run config with the YAML features people use
name: fuzz
task: image_classification
model: {family: cnn, stages: [{channels: 32, pool: max}, {type: residual, channels: 64}]}
defaults: &defaults
  optimizer: sgd
  lr: 0.2
  betas: [0.9, 0.999]
train:
  <<: *defaults
  weight_decay: 5.0e-4
  epochs: 2
  schedule: cosine
  precision: "bf16"
  metric: val_accuracy
notes: |
  multi-line
  text
"""


def load_then_build(path) -> None:
    try:
        data = load_yaml(path)
    except ConfigError as e:
        assert str(e).startswith(f"{path}:") and len(str(e)) < 600 and "\n" not in str(e), str(e)
        return
    data.pop("defaults", None)
    recipe_or_config_error(data)


@FUZZ
@given(st.binary(max_size=300))
def test_load_yaml_random_bytes(workdir, data):
    load_then_build(put(workdir, "random.yaml", data))


@FUZZ
@given(EDITS)
def test_load_yaml_mutated(workdir, edits):
    load_then_build(put(workdir, "mutated.yaml", mutate(VALID_YAML, edits)))


@FUZZ
@given(st.text(alphabet=st.sampled_from(list(":-?[]{},&*!|>'\"#%@`\n\t <=") + list("ab1.")), max_size=200))
def test_loads_yaml_syntax_soup(text):
    try:
        loads_yaml(text, "soup.yaml")
    except ConfigError as e:
        assert str(e).startswith("soup.yaml") and len(str(e)) < 600 and "\n" not in str(e), str(e)


# ----------------------------------------------------------------------------- text readers

VALID_TEXT = {
    "p.tsv": "hello\tbonjour\nthank you\tmerci\ncafé\tcoffee\n".encode(),
    "p.jsonl": b'{"src": "a", "tgt": "b"}\n{"src": "\\u00e9t\\u00e9", "tgt": "summer", "n": [1, {"x": null}]}\n',
    "l.csv": b'id,text,label\n1,"hello, world",pos\n2,"two\nlines",neg\n3,plain,pos\n',
    "l.tsv": b"text\tlabel\nhi there\ta\n\"quoted\"\tb\n",
    "l.jsonl": b'{"text": "hi", "label": 3}\n{"text": "yo", "label": "x"}\n',
}


def read_or_data_error(path) -> None:
    reader = read_parallel if path.name.startswith("p.") else read_labelled
    try:
        reader(path)
    except DataError as e:
        assert str(e).startswith(str(path)), str(e)
    try:
        reader(path, skip_bad=True)
    except DataError as e:
        assert str(e).startswith(str(path)), str(e)


@FUZZ
@given(st.sampled_from(sorted(VALID_TEXT)), st.binary(max_size=200))
def test_text_readers_random_bytes(workdir, name, data):
    read_or_data_error(put(workdir, name, data))
    assert all(isinstance(e, str) and e for e in read_fortune_file(put(workdir, "fortune", data)))


@FUZZ
@given(st.sampled_from(sorted(VALID_TEXT)), EDITS)
def test_text_readers_mutated(workdir, name, edits):
    read_or_data_error(put(workdir, name, mutate(VALID_TEXT[name], edits)))


# ----------------------------------------------------------------------------- IDX files

def _idx_bytes(tensor: torch.Tensor, gz: bool) -> bytes:
    code = images._TORCH_TO_IDX[tensor.dtype]
    raw = (bytes([0, 0, code, tensor.dim()]) + b"".join(d.to_bytes(4, "big") for d in tensor.shape)
           + tensor.numpy().astype(images._IDX_DTYPES[code]).tobytes())
    return gzip.compress(raw, mtime=0) if gz else raw


VALID_IDX = [_idx_bytes(torch.arange(60, dtype=torch.uint8).reshape(3, 4, 5), False),
             _idx_bytes(torch.arange(12, dtype=torch.int32).reshape(3, 4), True),
             _idx_bytes(torch.linspace(-1, 1, 10, dtype=torch.float64), False)]


def idx_or_data_error(path) -> None:
    try:
        images.read_idx(path)
    except DataError as e:
        assert str(e).startswith(str(path)) and len(str(e)) < 600, str(e)


@FUZZ
@given(st.binary(max_size=64) | st.binary(max_size=64).map(lambda b: b"\x00\x00" + b))
def test_idx_random_bytes(workdir, data):
    idx_or_data_error(put(workdir, "random-idx", data))


@FUZZ
@given(st.sampled_from(range(len(VALID_IDX))), EDITS)
def test_idx_mutated(workdir, which, edits):
    idx_or_data_error(put(workdir, "mutated-idx", mutate(VALID_IDX[which], edits)))


# ----------------------------------------------------------------------------- image files

def _image_bytes(fmt: str, mode: str) -> bytes:
    from PIL import Image

    x = (np.arange(12 * 10).reshape(12, 10) * 2).astype(np.uint8)
    img = Image.fromarray(x)
    if mode == "I;16":
        img = Image.fromarray(x.astype(np.uint16) * 257)
    elif mode != "L":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


VALID_IMAGES = [_image_bytes("PNG", "L"), _image_bytes("PNG", "I;16"), _image_bytes("PNG", "RGBA"),
                _image_bytes("PNG", "P"), _image_bytes("JPEG", "RGB"), _image_bytes("GIF", "P"),
                _image_bytes("TIFF", "CMYK"), _image_bytes("BMP", "1"), _image_bytes("WEBP", "RGBA")]


def image_or_data_error(path) -> None:
    # a small pixel cap keeps a mutated header (say 9000x9000) from costing seconds per example
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(images, "MAX_IMAGE_PIXELS", 1 << 16)
        try:
            out = images.load_image_file(path)
            assert out.shape == (1, 28, 28) and out.dtype == torch.uint8
        except DataError as e:
            assert str(e).startswith(str(path)) and len(str(e)) < 600 and "\n" not in str(e), str(e)


@FUZZ
@given(st.binary(max_size=200))
def test_image_random_bytes(workdir, data):
    image_or_data_error(put(workdir, "random.img", data))


@FUZZ
@given(st.sampled_from(range(len(VALID_IMAGES))), EDITS)
def test_image_mutated(workdir, which, edits):
    image_or_data_error(put(workdir, "mutated.img", mutate(VALID_IMAGES[which], edits)))


# ----------------------------------------------------------------------------- tokenizer.json

@pytest.fixture(scope="module")
def tokenizer_specs():
    bpe = Tokenizer.train_bpe(["the cat sat on the mat, hello world"] * 3, vocab_size=280)
    char = Tokenizer.train_char(["hello 世界"])
    return [json.loads(t.tok.to_str()) for t in (bpe, char)]


def tokenizer_or_data_error(path) -> None:
    try:
        tok = Tokenizer.from_file(path)
    except DataError as e:
        assert str(e).startswith(str(path)) and len(str(e)) < 600, str(e)
        return
    ids = tok.encode("hello the cat 世界")  # a file that loads must also work
    tok.decode(ids)


@FUZZ
@given(st.binary(max_size=200) | st.text(alphabet=string.printable, max_size=100).map(str.encode))
def test_tokenizer_random_bytes(workdir, data):
    tokenizer_or_data_error(put(workdir, "random-tokenizer.json", data))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 300) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)


def _paths(obj, prefix=()):
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj[:8]) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


@FUZZ
@given(st.integers(0, 1), st.lists(st.tuples(st.integers(0, 1 << 16), JSON_VALUES), min_size=1, max_size=3), EDITS)
def test_tokenizer_mutated(workdir, tokenizer_specs, which, replacements, edits):
    spec = json.loads(json.dumps(tokenizer_specs[which]))
    for pos, value in replacements:  # a field of the right file given a value of the wrong kind
        paths = list(_paths(spec))[1:]
        *parent, key = paths[pos % len(paths)]
        node = spec
        for k in parent:
            node = node[k]
        node[key] = value
    text = json.dumps(spec, ensure_ascii=False).encode()
    tokenizer_or_data_error(put(workdir, "json-mutated-tokenizer.json", text))
    tokenizer_or_data_error(put(workdir, "byte-mutated-tokenizer.json", mutate(text, edits)))


def test_tokenizer_regressions(workdir, tokenizer_specs):
    """Cases the fuzzing found or that must hold: JSON that is no tokenizer, a directory, and a
    character tokenizer whose vocabulary lost every character (it encoded with an IndexError)."""
    for text in (b"{}", b"[]", b"null", b'{"model": 1}', b"\xff\xfe{}"):
        with pytest.raises(DataError, match="not a valid tokenizer.json"):
            Tokenizer.from_file(put(workdir, "t.json", text))
    with pytest.raises(DataError, match="is a directory, not a tokenizer.json"):
        Tokenizer.from_file(workdir)
    spec = json.loads(json.dumps(tokenizer_specs[1]))
    spec["model"]["vocab"] = {k: v for k, v in spec["model"]["vocab"].items() if len(k) > 1}
    tok = Tokenizer.from_file(put(workdir, "no-chars.json", json.dumps(spec).encode()))
    assert set(tok.encode("hello")) == {tok.unk_id}
