"""A procedural PA chest radiograph: the toolkit's embedded default data.

:func:`generate_phantom` draws one frontal (PA) chest X-ray from a seed: body silhouette with
shoulders, lungs with vascular markings, heart, mediastinum and trachea, spine, posterior and
anterior ribs, clavicles, scapulae, hemidiaphragms, acquisition noise. Findings (cardiomegaly,
pleural effusion, consolidation / lung opacity, pneumothorax, nodule) are drawn on request or at
random and are consistent with the masks, labels and the English / Chinese reports.
:class:`PhantomDataset` serves them as :class:`~cxrfm.data.sample.CXRSample`. How the image is
drawn, and what it costs, is described in :mod:`cxrfm.data.phantom.render`.

Sides are the **patient's**: the patient's right lung is on the image left (``x < 0``), as on any
PA radiograph.

Determinism: each seed feeds separate random streams for anatomy, texture, findings, noise and
the report, so forcing a finding on a seed changes only that finding's region.

Modules (dependencies run down the list):

- :mod:`~cxrfm.data.phantom.config`: :data:`SUPPORTED_FINDINGS`, :data:`PARENT_LABELS`,
  :data:`DEFAULT_FINDING_PROBS`, :data:`UNIT_CM`, :class:`PhantomConfig`, :class:`PhantomCase`,
  size and seed checks.
- :mod:`~cxrfm.data.phantom.geometry`: anatomical coordinates (``Grid``), distance-field and
  thickness primitives, the drawing canvas.
- :mod:`~cxrfm.data.phantom.anatomy`: per-seed anatomy parameters and the shapes of the lungs,
  heart and thoracic cavity.
- :mod:`~cxrfm.data.phantom.tissue`: soft tissue and bone density (body wall, breasts, hila,
  gastric bubble, ribs, spine, clavicles, scapulae, humeri, airways).
- :mod:`~cxrfm.data.phantom.texture`: the pulmonary vascular tree and parenchymal noise.
- :mod:`~cxrfm.data.phantom.findings`: :func:`resolve_findings` (which findings, side, lobe,
  severity) and the drawing of effusion, pneumothorax, consolidation / opacity and nodules.
- :mod:`~cxrfm.data.phantom.reports`: templated English (IU-Xray style) and Chinese reports.
- :mod:`~cxrfm.data.phantom.render`: :class:`ChestPhantom`, lung air, display (film curve,
  noise, blur, edge enhancement), masks, labels and the assembled :class:`PhantomCase`.
- :mod:`~cxrfm.data.phantom.dataset`: :func:`generate_phantom`, :data:`SPLIT_SEED_OFFSETS`,
  :class:`PhantomDataset`.

The gallery figure is :func:`cxrfm.figures.phantom.save_phantom_gallery` (this package imports no
matplotlib).
"""

from cxrfm.data.phantom.config import (
    DEFAULT_FINDING_PROBS,
    PARENT_LABELS,
    SUPPORTED_FINDINGS,
    UNIT_CM,
    PhantomCase,
    PhantomConfig,
)
from cxrfm.data.phantom.dataset import SPLIT_SEED_OFFSETS, PhantomDataset, generate_phantom
from cxrfm.data.phantom.findings import LOBES, resolve_findings
from cxrfm.data.phantom.render import ChestPhantom
from cxrfm.data.phantom.reports import PhantomReport, compose_report

__all__ = [
    "DEFAULT_FINDING_PROBS",
    "LOBES",
    "PARENT_LABELS",
    "SPLIT_SEED_OFFSETS",
    "SUPPORTED_FINDINGS",
    "UNIT_CM",
    "ChestPhantom",
    "PhantomCase",
    "PhantomConfig",
    "PhantomDataset",
    "PhantomReport",
    "compose_report",
    "generate_phantom",
    "resolve_findings",
]
