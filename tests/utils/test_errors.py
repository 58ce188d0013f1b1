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


def test_an_error_raised_in_a_dataloader_worker_arrives_as_itself_with_its_one_line_message(tmp_path):
    # torch re-raises a worker's exception as ErrorType("Caught ... Original Traceback ..."): our
    # types rebuild their own message from that, so the CLI still prints one line, no traceback.
    import torch
    from torch.utils.data import DataLoader, Dataset

    from cxrfm.errors import DatasetError, ImageReadError

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            if index == 1:
                raise ImageReadError(tmp_path / "scan.dcm", "truncated pixel data")
            return torch.zeros(1)

    with pytest.raises(ImageReadError) as caught:
        list(DataLoader(Broken(), batch_size=1, num_workers=1))
    assert str(caught.value) == f"cannot read image {tmp_path / 'scan.dcm'}: truncated pixel data"
    assert "Traceback" not in str(caught.value) and "\n" not in str(caught.value)
    plain = DatasetError("not a worker message")
    assert "not a worker message" in str(plain)
