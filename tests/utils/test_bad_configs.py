"""Bad config input never escapes raw: every failure is a ConfigError naming the file and the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cxrfm import config as config_module
from cxrfm.config import MAX_CONFIG_BYTES, from_dict, load_config, parse_override
from cxrfm.configs import CONFIG_DIR
from cxrfm.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Checked:
    size: int = 1

    def __post_init__(self):
        if self.size < 1:
            raise ConfigError("checked.size", "must be positive")  # no source: from_dict adds the file


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    optim: Optim = field(default_factory=Optim)
    checked: Checked = field(default_factory=Checked)
    extra: dict = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


def _write(tmp_path, text: str | bytes, name="run.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def _fails(tmp_path, text, *parts) -> ConfigError:
    """load_config on ``text`` raises ConfigError naming the file and every one of ``parts``."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(Run, path)
    message = str(info.value)
    assert str(path) in message and info.value.source == str(path), message
    for part in parts:
        assert part in message, (part, message)
    return info.value


# ---------------------------------------------------------------------------------- alias bombs


def _bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_any_object_is_built(tmp_path, monkeypatch):
    text = _bomb()
    assert len(text) < 1000  # a few hundred bytes that would expand to 9^9 = 387 million nodes

    def never(self, node):
        raise AssertionError("the document was constructed")

    monkeypatch.setattr(config_module._ConfigLoader, "construct_document", never)
    error = _fails(tmp_path, text, "alias bomb")
    assert error.field == "<aliases>"


def test_alias_bomb_in_an_override_is_refused():
    with pytest.raises(ConfigError) as info:
        parse_override("extra=" + _bomb().replace("\n", ", ").join("{}"))
    assert "alias bomb" in str(info.value) and info.value.field == "extra" and info.value.source == "--set"


def test_modest_aliases_and_merge_keys_still_work(tmp_path):
    path = _write(tmp_path, "extra:\n  base: &base {p: 1, q: [1, 2]}\n  more: {<<: *base, q: 3}\n  again: *base\n")
    config = load_config(Run, path)
    assert config.extra == {"base": {"p": 1, "q": [1, 2]}, "more": {"p": 1, "q": 3}, "again": {"p": 1, "q": [1, 2]}}


@pytest.mark.parametrize("text", ["extra: &x {a: *x}\n", "tags: &y [*y]\n"])
def test_recursive_alias(tmp_path, text):
    _fails(tmp_path, text, "recursive alias", "line 1")


# ------------------------------------------------------------------------------------------ keys


@pytest.mark.parametrize(
    ("text", "key"),
    [("on: 1\n", "'on'"), ("yes: 1\n", "'yes'"), ("optim:\n  off: 2\n", "optim.off"), ("No: 1\n", "'No'")],
)
def test_yaml11_boolean_key_says_to_quote_it(tmp_path, text, key):
    error = _fails(tmp_path, text, key, "boolean", "keys must be strings", "quote it")
    assert "line" in error.reason


@pytest.mark.parametrize(("text", "key"), [("3: x\n", "'3'"), ("~: x\n", "'~'"), ("1.5: x\n", "'1.5'"), ("? [a]\n: 1\n", "sequence")])
def test_non_string_key(tmp_path, text, key):
    _fails(tmp_path, text, key, "keys must be strings")


def test_non_string_key_given_to_from_dict():
    with pytest.raises(ConfigError) as info:
        from_dict(Run, {"optim": {True: 1}}, source="given.yaml")
    assert "optim.True" in str(info.value) and "given.yaml" in str(info.value) and "quote" in str(info.value)


@pytest.mark.parametrize(("text", "key"), [("steps: 1\nsteps: 2\n", "'steps'"), ("optim:\n  lr: 1\n  'lr': 2\n", "optim.lr")])
def test_duplicate_key(tmp_path, text, key):
    _fails(tmp_path, text, key, "duplicate key at line", "first at line")


# ---------------------------------------------------------------------------------------- floats


@pytest.mark.parametrize(("literal", "value"), [("1e-4", 1e-4), ("1E-4", 1e-4), ("5e3", 5e3), ("-2.5e-3", -2.5e-3), ("+1e2", 100.0), (".5e1", 5.0), ("1.0e5", 1e5)])
def test_exponent_floats_read_the_same_in_a_file_and_in_set(tmp_path, literal, value):
    from_file = load_config(Run, _write(tmp_path, f"optim:\n  lr: {literal}\n"))
    from_set = load_config(Run, None, [f"optim.lr={literal}"])
    assert from_file.optim.lr == from_set.optim.lr == pytest.approx(value)
    listed = load_config(Run, _write(tmp_path, f"optim:\n  betas: [{literal}, {literal}]\n"), [f"optim.betas=[{literal}, 0.5]"])
    assert listed.optim.betas == (pytest.approx(value), 0.5)


def test_integers_and_strings_keep_their_types(tmp_path):
    config = load_config(Run, _write(tmp_path, "steps: 5e3\nname: '1e-4'\ntags: [e5, 1e, 1.5e, 1e-4x, 09]\n"))
    assert config.steps == 5000 and config.name == "1e-4" and config.tags == ["e5", "1e", "1.5e", "1e-4x", "09"]


@pytest.mark.parametrize(("text", "field_name"), [("tags: [0x1e5]\n", "tags[0]"), ("name: 1e5\n", "name")])
def test_exponent_literals_are_numbers_where_strings_are_expected(tmp_path, text, field_name):
    _fails(tmp_path, text, field_name, "expected a string")


# -------------------------------------------------------------------------------- file problems


def test_not_utf8(tmp_path):
    _fails(tmp_path, b"name: caf\xe9\n", "<file>", "not UTF-8", "0xe9")


def test_huge_file_is_refused_unread(tmp_path):
    _fails(tmp_path, b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1), "<file>", f"larger than {MAX_CONFIG_BYTES} bytes")


@pytest.mark.parametrize(("text", "kind"), [("- 1\n- 2\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    _fails(tmp_path, text, "<root>", "top level must be a mapping", kind)


@pytest.mark.parametrize(
    ("text", "where"),
    [("steps: [1,\nname: x\n", "line 3, column 1"), ("optim:\n  lr: 1\n bad: 2\n", "line 3, column 2"), ("name: 'open\n", "line 2")],
)
def test_syntax_error_gives_line_and_column(tmp_path, text, where):
    _fails(tmp_path, text, "<file>", "not valid YAML at " + where)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("extra: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
        ("a: 1\n---\nb: 2\n", "single document"),
        ("steps: !!python/object/apply:os.system [echo hi]\n", "python/object"),
        ("steps: !!int x\n", "steps"),
        ("steps: " + "9" * 5000 + "\n", "steps"),
        ("optim: {lr: " + "9" * 400 + "}\n", "optim.lr"),
        ("name: a\x00b\n", "not allowed"),
    ],
)
def test_unreadable_documents_and_values(tmp_path, text, expected):
    _fails(tmp_path, text, expected)


def test_directory_instead_of_a_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(Run, tmp_path)
    assert str(tmp_path) in str(info.value) and "directory" in str(info.value)


def test_post_init_errors_name_the_file(tmp_path):
    _fails(tmp_path, "checked:\n  size: 0\n", "checked.size", "must be positive")


# ------------------------------------------------------------------------------------ overrides


@pytest.mark.parametrize(
    ("override", "field_name"),
    [("no-equals-sign", "no-equals-sign"), ("=1", "=1"), ("a..b=1", "a..b"), (".a=1", ".a"), ("a.=1", "a."), (" = 1", " = 1")],
)
def test_malformed_override_names_itself(override, field_name):
    with pytest.raises(ConfigError) as info:
        parse_override(override)
    assert info.value.field == field_name and "--set" in str(info.value)


@pytest.mark.parametrize(
    ("override", "field_name", "reason"),
    [("steps=[1,", "steps", "line 1, column"), ("extra={on: 1}", "extra.on", "quote it"), ("extra={a: 1, a: 2}", "extra.a", "duplicate"), ("extra=&x [*x]", "extra", "recursive")],
)
def test_bad_override_value_names_the_key(override, field_name, reason):
    with pytest.raises(ConfigError) as info:
        load_config(Run, None, [override])
    assert info.value.field == field_name and reason in str(info.value) and "--set" in str(info.value)


def test_overrides_must_be_a_list_not_one_string():
    with pytest.raises(ConfigError, match="not one string"):
        load_config(Run, None, "steps=3")


# ------------------------------------------------------------------------------ shipped configs


def _config_class(stem: str):
    from cxrfm.recipes.classify import ClassifyConfig
    from cxrfm.recipes.demo import DemoConfig
    from cxrfm.recipes.diff_cxr.config import DiffCXRConfig
    from cxrfm.recipes.dvae import DVAETrainConfig
    from cxrfm.recipes.pretrain import PretrainConfig
    from cxrfm.recipes.report import ReportTrainConfig
    from cxrfm.recipes.segmenter import SegmenterTrainConfig

    for prefix, cls in (("demo", DemoConfig), ("classify", ClassifyConfig), ("report", ReportTrainConfig),
                        ("uar", ReportTrainConfig), ("dvae", DVAETrainConfig), ("segmenter", SegmenterTrainConfig),
                        ("diff-cxr", DiffCXRConfig)):
        if stem.startswith(prefix):
            return cls
    return PretrainConfig


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_still_loads(path):
    assert load_config(_config_class(path.stem), path) is not None
