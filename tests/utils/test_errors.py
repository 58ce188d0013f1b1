import pickle

import pytest

from cxrfm.errors import CheckpointError, ConfigError, DatasetError, ImageReadError


@pytest.mark.parametrize(
    "error",
    [ImageReadError("/x/a.png", "truncated"), DatasetError("m.csv", "row 3: no image"),
     ConfigError("train.lr", "expected a number", "run.yaml"), CheckpointError("ckpt/", "missing model.safetensors")],
)
def test_errors_survive_pickling(error):
    # DataLoader workers pickle exceptions back to the main process.
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
