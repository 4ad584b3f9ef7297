"""YAML loading with limits, and config values that mean nothing: every failure is one short ConfigError
that names the file (and line), and small hostile files fail at once instead of hanging or crashing."""
from __future__ import annotations

import math

import pytest

from archlab.config import (
    MAX_YAML_BYTES,
    ConfigError,
    brief_repr,
    from_dict,
    load_yaml,
    loads_yaml,
    parse_override,
)
from archlab.train.config import TrainConfig

# the classic "billion laughs": 9 levels of 9 aliases, 9^9 = 387M strings once anything walks it
BILLION_LAUGHS = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{x}: &{x} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, x in zip("abcdefgh", "bcdefghi"))


def config_error(path_or_text, *, text: bool = False) -> str:
    with pytest.raises(ConfigError) as e:
        loads_yaml(path_or_text, "inline.yaml") if text else load_yaml(path_or_text)
    msg = str(e.value)
    assert len(msg) < 500 and "\n" not in msg, msg
    return msg


def write(tmp_path, name, data: str | bytes):
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_plain_yaml_loads_as_before(tmp_path):
    text = "base: &base {lr: 0.001, betas: [0.9, 0.99]}\nrun:\n  <<: *base\n  lr: 3.0e-4\n  note: ok\n"
    assert load_yaml(write(tmp_path, "ok.yaml", "\ufeff" + text)) == {
        "base": {"lr": 0.001, "betas": [0.9, 0.99]},
        "run": {"lr": 3.0e-4, "betas": [0.9, 0.99], "note": "ok"},
    }
    # aliases within the budget are fine: 100 uses of a 900-value list
    many = "a: &a [" + ", ".join(["1"] * 900) + "]\nb: [" + ", ".join(["*a"] * 100) + "]\n"
    assert len(loads_yaml(many)["b"]) == 100


def test_billion_laughs(tmp_path):
    assert len(BILLION_LAUGHS) < 450
    msg = config_error(write(tmp_path, "lol.yaml", BILLION_LAUGHS))
    assert msg.startswith(f"{tmp_path / 'lol.yaml'}:") and "aliases expand the data" in msg


def test_recursive_and_too_many_aliases():
    assert "recursive" in config_error("a: &a [1, *a]", text=True)
    assert "recursive" in config_error("a: &a {b: *a}", text=True)
    uses = "x: &x 1\ny: [" + ", ".join(["*x"] * 101) + "]\n"
    assert config_error(uses, text=True) == "inline.yaml:2: more than 100 aliases (*name); write the values out"


BLOCK_NESTING = "a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 200))


@pytest.mark.parametrize("deep, line", [("[" * 100_000, 1), ("{a: " * 100_000, 1), ("- " * 50_000 + "x", 1),
                                        (BLOCK_NESTING, 64)])
def test_deep_nesting(deep, line):
    assert config_error(deep, text=True) == f"inline.yaml:{line}: nested deeper than 64 levels"


def test_aliases_cannot_nest_deeper_than_the_limit():
    nest = "a: &a " + "[" * 60 + "]" * 60 + "\nb: " + "[" * 10 + "*a" + "]" * 10 + "\n"
    assert "aliases nest the data deeper than 64" in config_error(nest, text=True)


def test_directory_missing_and_unreadable_files(tmp_path):
    assert config_error(tmp_path) == f"{tmp_path}: is a directory, not a YAML file"
    assert config_error(tmp_path / "absent.yaml") == f"{tmp_path / 'absent.yaml'}: no such file"


def test_invalid_utf8_names_the_line(tmp_path):
    path = write(tmp_path, "latin.yaml", b"a: 1\nname: caf\xe9\n")
    assert config_error(path).startswith(f"{path}:2: not UTF-8 (byte 0xe9")


def test_huge_file(tmp_path):
    path = write(tmp_path, "huge.yaml", b"a: " + b"x" * MAX_YAML_BYTES)
    assert "larger than 1 MiB" in config_error(path)
    assert "more than" in config_error("a: " + "x" * MAX_YAML_BYTES, text=True)


def test_syntax_and_value_errors_name_the_line(tmp_path):
    assert config_error("a: 1\nb: [1, 2\n", text=True).startswith("inline.yaml:3: not valid YAML")
    nul = "inline.yaml:2: not valid YAML: character #x0000 is not allowed in YAML"
    assert config_error("a: 1\nb: x\x00\n", text=True) == nul
    assert config_error("a: 1\nb: 2001-02-30\n", text=True).startswith(
        "inline.yaml:2: not valid YAML: '2001-02-30' is not a valid timestamp (day is out of range")
    assert "is not a valid int" in config_error("a: " + "9" * 5000, text=True)  # Python's 4300-digit limit
    assert "is not a valid float" in config_error("a: !!float " + "z" * 100_000, text=True)
    assert "constructor for the tag" in config_error("a: !" + "t" * 100_000 + " 1", text=True)
    assert "unhashable key" in config_error("? [1]\n: 2\n", text=True)


def test_top_level_must_be_a_mapping(tmp_path):
    assert config_error(write(tmp_path, "list.yaml", "- a\n- b\n")).endswith("top level, got a list: ['a', 'b']")
    assert config_error(write(tmp_path, "empty.yaml", "")).endswith("got an empty file")


def test_override_values_have_the_same_limits():
    assert parse_override("a.b=[1, 2") == (["a", "b"], "[1, 2")  # not YAML: the text itself, as before
    assert parse_override("train.lr=3e-4") == (["train", "lr"], "3e-4")
    with pytest.raises(ConfigError, match=r"^--set x:1: aliases expand the data"):
        parse_override("x={" + BILLION_LAUGHS.replace("\n", ", ") + "}")


# ----------------------------------------------------------------------------- values that mean nothing

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_int_field_refuses_nan_and_inf(value):
    with pytest.raises(ConfigError, match=rf"^train\.batch_size: expected an integer, got {value}$"):
        from_dict(TrainConfig, {"epochs": 1, "batch_size": value}, "train")


def test_float_fields():
    with pytest.raises(ConfigError, match=r"^train\.lr: expected a number, got nan$"):
        from_dict(TrainConfig, {"epochs": 1, "lr": loads_yaml("x: .nan")["x"]}, "train")
    with pytest.raises(ConfigError, match=r"^train\.lr: expected a number, got nan$"):
        from_dict(TrainConfig, {"epochs": 1, "lr": "nan"}, "train")  # the string path ("1e-3") too
    with pytest.raises(ConfigError, match=r"^train\.lr: <1329-bit integer> is too large for a number$"):
        from_dict(TrainConfig, {"epochs": 1, "lr": 10 ** 400}, "train")
    # inf is the config's own validate's call: a length must be finite (leave epochs out for no epoch limit)
    with pytest.raises(ConfigError, match=r"^train: epochs must be a positive, finite number, got inf$"):
        from_dict(TrainConfig, {"epochs": loads_yaml("x: .inf")["x"], "max_steps": 10}, "train")


def test_messages_show_huge_values_briefly():
    huge = {"epochs": 1, "optimizer": ["x" * 10_000] * 100_000}
    with pytest.raises(ConfigError) as e:
        from_dict(TrainConfig, huge, "train")
    assert str(e.value).startswith("train.optimizer: ['xxx") and len(str(e.value)) < 200
    with pytest.raises(ConfigError) as e:  # validate's own message, clipped
        from_dict(TrainConfig, {"epochs": 1, "betas": [0.5] * 100_000}, "train")
    assert str(e.value).startswith("train: betas must be two numbers, got [0.5, 0.5") and len(str(e.value)) <= 300
    with pytest.raises(ConfigError) as e:
        from_dict(TrainConfig, {"y" * 100_000: 1}, "train")
    assert len(str(e.value)) < 600 and "unknown key 'yyy" in str(e.value)
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    assert brief_repr(deep) == "[[[[...]]]]" and len(brief_repr(list(range(10 ** 6)))) < 80
    assert brief_repr(10 ** 5000) == "<16610-bit integer>"
