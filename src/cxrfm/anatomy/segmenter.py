"""A small U-Net lung-field segmenter that works at a fixed internal resolution for any input size.

``LungSegmenter.predict(images)`` letterboxes each ``(B, 1, H, W)`` batch into the model's
``input_size`` (aspect ratio kept, black padding split evenly), runs the U-Net, and maps the
probabilities back onto the original ``(H, W)`` grid by cropping exactly the letterboxed region and
resizing it. ``predict_mask`` thresholds and cleans the result (largest components, holes filled).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cxrfm.anatomy.postprocess import clean_lung_mask
from cxrfm.config import from_dict
from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.io.image import fit_geometry, resize_image

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class LungSegmenterConfig:
    """Shape of the U-Net.

    Attributes:
        input_size: internal ``(H, W)`` resolution; both must be divisible by ``2 ** depth``.
        base_width: channels at full resolution; doubled at each level.
        depth: number of 2x downsamplings (levels below the full-resolution one).
        norm: ``"batch"`` (fast, needs batches > 1 in training) or ``"group"`` (8 groups).
    """

    input_size: tuple[int, int] = (192, 192)
    base_width: int = 16
    depth: int = 4
    norm: Literal["batch", "group"] = "batch"

    def __post_init__(self) -> None:
        size = tuple(self.input_size) if isinstance(self.input_size, (list, tuple)) else ()
        if len(size) != 2 or not all(_is_int(side) and side > 0 for side in size):
            raise ValueError(f"input_size must be two positive integers (H, W), got {self.input_size!r}")
        self.input_size = (int(size[0]), int(size[1]))
        for name in ("base_width", "depth"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        stride = 2**self.depth
        if any(side % stride for side in self.input_size):
            raise ValueError(f"input_size {self.input_size} must be divisible by 2**depth = {stride}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', got {self.norm!r}")


def _is_int(value) -> bool:
    """An integer, numpy's included (bools and floats such as 64.5 are not)."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


# Named presets: "tiny" trains on phantoms in seconds; "default" is the OpenIST benchmark model
# (Dice 0.975 on OpenIST test, BENCHMARKS.md); "large" trades 2-3x CPU time for a finer grid.
PRESETS: dict[str, LungSegmenterConfig] = {
    "tiny": LungSegmenterConfig(input_size=(64, 64), base_width=8, depth=3),
    "default": LungSegmenterConfig(input_size=(192, 192), base_width=16, depth=4),
    "large": LungSegmenterConfig(input_size=(256, 256), base_width=16, depth=4),
}


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(8, channels), channels)


class DoubleConv(nn.Sequential):
    """(conv3x3 -> norm -> ReLU) x 2; bias-free convs because the norm supplies the shift."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Bilinear 2x upsampling, concatenation with the skip, DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.conv = DoubleConv(in_channels + skip_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class LungSegmenter(nn.Module):
    """U-Net: ``(B, 1, h, w)`` image -> ``(B, 1, h, w)`` lung logits.

    ``forward`` works on any size divisible by ``2 ** depth`` (training feeds ``input_size``
    crops); use :meth:`predict` / :meth:`predict_mask` for images of arbitrary size.
    """

    def __init__(self, config: LungSegmenterConfig | None = None):
        super().__init__()
        self.config = config or LungSegmenterConfig()
        widths = [self.config.base_width * 2**level for level in range(self.config.depth + 1)]
        norm = self.config.norm
        self.stem = DoubleConv(1, widths[0], norm)
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1], norm) for i in range(self.config.depth))
        self.up = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], widths[i], norm) for i in reversed(range(self.config.depth))
        )
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: ``(B, 1, h, w)`` in ``[0, 1]`` -> logits ``(B, 1, h, w)``."""
        x = standardize(images)
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for block in self.up:
            x = block(x, skips.pop())
        return self.head(x)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Lung probabilities on the images' own grid.

        Args:
            images: ``(B, 1, H, W)`` float in ``[0, 1]``, any ``H, W``.
        Returns:
            ``(B, 1, H, W)`` float32 probabilities.
        """
        _check_batch(images)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            # Masks should not depend on the caller's autocast context (e.g. a bf16 MAE loop).
            with torch.autocast(device_type=device.type, enabled=False):
                boxed, box = letterbox(images.to(device=device, dtype=torch.float32), self.config.input_size)
                probabilities = torch.sigmoid(self(boxed))
                return unletterbox(probabilities, box, images.shape[-2:]).to(images.device)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def predict_mask(self, images: torch.Tensor, threshold: float = 0.5, keep_largest: int = 2) -> torch.Tensor:
        """Binary lung masks ``(B, 1, H, W)`` float32 in ``{0, 1}``.

        Thresholds :meth:`predict`, keeps the ``keep_largest`` largest connected components (two
        lungs; 0 keeps all) and fills holes in each.
        """
        masks = (self.predict(images) > threshold).cpu()
        cleaned = [
            torch.from_numpy(clean_lung_mask(mask[0].numpy(), keep_largest=keep_largest)) for mask in masks
        ]
        return torch.stack(cleaned).unsqueeze(1).to(device=images.device, dtype=torch.float32)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model": "LungSegmenter", **dataclasses.asdict(self.config)}
        config["input_size"] = list(config["input_size"])
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "LungSegmenter":
        """Load a folder written by :meth:`save_pretrained`.

        Raises:
            CheckpointError: naming the file (and field) of a missing, malformed or mismatched
                folder; the weights are read by safetensors only (never a pickle), and compared
                with the config on the ``meta`` device before any memory is allocated.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise CheckpointError(directory, f"is a file, not a folder with {CONFIG_FILE} + {WEIGHTS_FILE}")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise CheckpointError(directory, f"missing {name}")
        config, present = _read_config(directory / CONFIG_FILE)
        weights = directory / WEIGHTS_FILE
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(weights, f"cannot read weights: {exc}") from None
        skeleton = _build(cls, config, directory / CONFIG_FILE, "meta")  # no memory: shapes only
        try:
            _check_state(skeleton, state, weights)
        except CheckpointError as exc:
            absent = [f.name for f in dataclasses.fields(LungSegmenterConfig) if f.name not in present]
            if not absent:
                raise
            raise CheckpointError(weights, f"{exc.reason}; {CONFIG_FILE} lacks {', '.join(absent)} (defaults were used)") from None
        model = _build(cls, config, directory / CONFIG_FILE)
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(weights, f"weights do not match the config: {exc}") from None
        return model.to(map_location).eval()


def _read_config(path: Path) -> tuple[LungSegmenterConfig, set[str]]:
    """Strictly parse a segmenter ``config.json`` -> (config, the fields it holds); problems are CheckpointErrors naming it."""
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise CheckpointError(path, f"bad config: not UTF-8 text (offset {exc.start})") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(path, f"bad config: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(path, f"bad config: expected a JSON object, got a {type(raw).__name__}")
    if "model_type" in raw:
        raise CheckpointError(path, f"bad config: a {raw['model_type']!r} checkpoint, not a LungSegmenter")
    model = raw.pop("model", "LungSegmenter")
    if model != "LungSegmenter":
        raise CheckpointError(path, f"bad config: field 'model' is {model!r}, not a LungSegmenter config")
    try:
        return from_dict(LungSegmenterConfig, raw, source=path), set(raw)
    except ConfigError as exc:
        raise CheckpointError(path, f"bad config: field '{exc.field}': {exc.reason}") from None
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
        raise CheckpointError(path, f"bad config: {exc}") from None


def _build(cls, config: LungSegmenterConfig, config_path: Path, device: str | None = None) -> "LungSegmenter":
    try:
        if device is None:
            return cls(config)
        with torch.device(device):
            return cls(config)
    except (RuntimeError, MemoryError, OverflowError, ValueError) as exc:
        raise CheckpointError(config_path, f"describes a model that cannot be built ({type(exc).__name__}: {exc})") from None


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], weights: Path) -> None:
    """Names and shapes of ``state`` against ``model``'s (which may be on the meta device)."""
    expected = model.state_dict()
    problems = []
    for label, names in (("missing", set(expected) - set(state)), ("unexpected", set(state) - set(expected))):
        if names:
            problems.append(f"{label} {', '.join(sorted(names)[:5])}" + (f" (+{len(names) - 5} more)" if len(names) > 5 else ""))
    wrong = [f"{n} {tuple(state[n].shape)} != {tuple(t.shape)}" for n, t in expected.items() if n in state and state[n].shape != t.shape]
    if wrong:
        problems.append(f"shape mismatch {', '.join(sorted(wrong)[:5])}")
    if problems:
        raise CheckpointError(weights, "weights do not match the config: " + "; ".join(problems))


def standardize(images: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Per-image zero mean / unit variance: radiograph windowing differs a lot between sources."""
    mean = images.mean(dim=(-3, -2, -1), keepdim=True)
    std = images.std(dim=(-3, -2, -1), keepdim=True)
    return (images - mean) / (std + eps)


@dataclass(frozen=True)
class LetterBox:
    """Where the resized image sits inside the padded canvas: rows ``top:top+height``, cols ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


def letterbox_geometry(size: tuple[int, int], target: tuple[int, int]) -> LetterBox:
    """Aspect-keeping fit of ``size`` into ``target``, centred (``cxrfm.io``'s ``mode="pad"`` geometry)."""
    _, (top, left), (height, width) = fit_geometry((int(size[0]), int(size[1])), target)
    return LetterBox(top, left, height, width)


def letterbox(images: torch.Tensor, target: tuple[int, int]) -> tuple[torch.Tensor, LetterBox]:
    """``(B, C, H, W)`` -> ``(B, C, *target)`` with black (0) padding, and the geometry to undo it."""
    box = letterbox_geometry(images.shape[-2:], target)
    return resize_image(images, target, mode="pad", interpolation="bilinear"), box


def unletterbox(images: torch.Tensor, box: LetterBox, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`letterbox`: crop the image region and resize it back to ``size``."""
    crop = images[..., box.top : box.top + box.height, box.left : box.left + box.width]
    if tuple(crop.shape[-2:]) == (int(size[0]), int(size[1])):
        return crop
    return resize_image(crop, (int(size[0]), int(size[1])), mode="stretch", interpolation="bilinear")


def _check_batch(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images of shape (B, 1, H, W), got {shape}")
