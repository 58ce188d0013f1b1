"""The one dataset dispatcher: every kind from a DatasetSpec, split roles, counts, caps, caching, errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset

from cxrfm.config import from_dict
from cxrfm.data.phantom import PhantomDataset
from cxrfm.data.registry import ADAPTERS, KINDS, CachedDataset, DatasetSpec, build_dataset, unwrap_dataset
from cxrfm.data.shards import ShardDataset, write_shards
from cxrfm.errors import ConfigError


def test_phantom_roles_come_from_disjoint_seed_ranges_with_their_own_counts():
    spec = DatasetSpec(kind="phantom", num_samples={"train": 3, "val": 2}, seed=5)
    train, val = build_dataset(spec, "train", (32, 32)), build_dataset(spec, "val", (32, 32))
    assert (len(train), len(val)) == (3, 2)
    assert torch.equal(val[0].image, PhantomDataset(1, (32, 32), seed=1_000_005)[0].image)
    assert torch.equal(train[0].image, PhantomDataset(1, (32, 32), seed=5)[0].image)
    assert val[0].meta["split"] == "val"
    with pytest.raises(ConfigError, match="no phantom count for split 'test'"):
        build_dataset(spec, "test", (32, 32))
    assert len(build_dataset(DatasetSpec(num_samples=4), "test", (16, 16))) == 4  # one count for every role


def test_caps_and_caching_keep_records_visible(tmp_path, write_gray, make_ramp):
    rows = ["image,split,findings"]
    for index in range(5):
        write_gray(tmp_path / f"{index}.png", make_ramp(12, 10, offset=index))
        rows.append(f"{index}.png,{'train' if index < 3 else 'validation'},finding {index}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    spec = DatasetSpec(kind="manifest", root=str(tmp_path / "manifest.csv"), splits={"val": "validation", "test": None},
                       max_samples={"train": 2}, cache=True)
    train = build_dataset(spec, "train", (8, 8))
    assert isinstance(train, CachedDataset) and len(train) == 2 and len(train.records) == 2
    assert train[0] is train[0]  # cached: loaded once
    val = build_dataset(spec, "val")
    assert len(val) == 2 and val[0].findings == "finding 3"
    assert not spec.has_split("test") and spec.has_split("val")
    assert unwrap_dataset(train).__class__.__name__ == "ManifestDataset"
    phantoms = build_dataset(DatasetSpec(num_samples=6, max_samples=2), "train", (16, 16))
    assert isinstance(phantoms, Subset) and len(phantoms) == 2


def test_shard_streams_are_a_kind_too(tmp_path):
    write_shards(PhantomDataset(4, (16, 16)), tmp_path / "shards", max_samples_per_shard=2)
    stream = build_dataset(DatasetSpec(kind="shards", root=str(tmp_path / "shards")), "train")
    assert isinstance(stream, ShardDataset) and len(list(stream)) == 4
    with pytest.raises(ConfigError, match="shards.cache"):
        build_dataset(DatasetSpec(kind="shards", root=str(tmp_path / "shards"), cache=True), field_name="shards")


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"kind": "padchest"}, "data", "kind: unknown dataset kind 'padchest'; known: phantom, shards, folder"),
        ({"kind": "phantom", "num_samples": {"train": 0}}, "data", "num_samples.train must be an integer >= 1"),
        ({"kind": "phantom", "max_samples": -3}, "data", "max_samples must be an integer >= 1"),
        ({"kind": "covid"}, "data.root", "needs a root"),
        ({"kind": "openist", "root": "/no/such/folder"}, "data.root", "does not exist"),
        ({"kind": "phantom", "options": {"no_such_option": 1}}, "data.options", "no_such_option"),
        ({"kind": "phantom", "sorce": 1}, "data.sorce", "unknown key"),
    ],
)
def test_bad_specs_are_config_errors_naming_the_field(spec, field, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as error:
        build_dataset(spec, "train", (16, 16))
    assert error.value.field == field


def test_kind_names_are_canonical_and_every_adapter_is_known():
    assert DatasetSpec(kind="IU_Xray").kind == "iu-xray"
    with pytest.raises(ValueError, match="unknown dataset kind"):
        DatasetSpec(kind="padchest")
    assert set(ADAPTERS) < set(KINDS) and {"phantom", "shards"} < set(KINDS)
    spec = from_dict(DatasetSpec, {"kind": "phantom", "num_samples": {"train": 2}})
    assert spec.count("train") == 2
