"""The phantom gallery figure (matplotlib lives in cxrfm.figures, not in cxrfm.data)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from cxrfm.data.phantom import generate_phantom
from cxrfm.figures.phantom import save_phantom_gallery


def test_gallery_writes_an_image(tmp_path):
    from PIL import Image

    cases = [generate_phantom(s, (64, 64), findings=f) for s, f in ((1, None), (2, {"Pleural Effusion": 0.5}))]
    path = save_phantom_gallery(cases, tmp_path / "figs" / "gallery.png")
    with Image.open(path) as image:
        assert image.size[0] > 300 and image.size[1] > 150
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    # The orange lung contour is drawn.
    assert ((pixels[..., 0] > 200) & (pixels[..., 2] < 80)).sum() > 50


def test_the_phantom_package_imports_no_matplotlib():
    code = "import sys, cxrfm.data.phantom; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
