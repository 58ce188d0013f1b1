"""Rule-based CheXpert labeler on hand-written sentences, MeSH label mapping, agreement on IU-Xray."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cxrfm.data.labels import CHEXPERT_FINDINGS
from cxrfm.evaluation.chexpert_labeler import (
    CHEXPERT_OBSERVATIONS,
    extract_mentions,
    label_report,
    label_reports,
    labels_from_mesh,
    split_sentences,
)

P, N, U = 1.0, 0.0, -1.0

# (report, expected labels of the named observations; every other one must be blank).
CASES = [
    ("No pleural effusion.", {"Pleural Effusion": N, "No Finding": P}),
    ("No pneumothorax, pleural effusion, or focal consolidation.",
     {"Pneumothorax": N, "Pleural Effusion": N, "Consolidation": N, "No Finding": P}),
    ("No focal consolidation, large pleural effusion, or pneumothorax is identified.",
     {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N, "No Finding": P}),
    ("There is no XXXX of a pleural effusion.", {"Pleural Effusion": N, "No Finding": P}),
    ("The lungs are free of focal airspace disease.", {"Lung Opacity": N, "No Finding": P}),
    ("Pneumothorax is not seen.", {"Pneumothorax": N, "No Finding": P}),
    ("Left basilar opacity may represent atelectasis.", {"Lung Opacity": P, "Atelectasis": U}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": U}),
    ("Cannot exclude a small right effusion.", {"Pleural Effusion": U}),
    ("Right basilar opacity, likely atelectasis versus pneumonia.",
     {"Lung Opacity": P, "Atelectasis": U, "Pneumonia": U}),
    ("Mild cardiomegaly.", {"Cardiomegaly": P}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": U}),
    ("The heart is enlarged.", {"Cardiomegaly": P}),
    ("The heart is not enlarged.", {"Cardiomegaly": N, "No Finding": P}),
    ("Heart size and mediastinal contours are within normal limits.",
     {"Cardiomegaly": N, "Enlarged Cardiomediastinum": N, "No Finding": P}),
    ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": P}),
    ("No effusion, mild cardiomegaly.", {"Pleural Effusion": N, "Cardiomegaly": P}),
    ("No change in mild cardiomegaly.", {"Cardiomegaly": P}),
    ("Findings consistent with congestive heart failure.", {"Edema": P, "Cardiomegaly": U}),
    ("No evidence of acute fracture. Old healed right rib fracture.", {"Fracture": P}),
    ("Left-sided pacemaker in place. No acute cardiopulmonary abnormality.",
     {"Support Devices": P, "No Finding": P}),
    ("The lungs are clear. No acute cardiopulmonary abnormality.", {"No Finding": P}),
    # Other abnormalities block "No Finding" even without a CheXpert observation.
    ("Calcified granuloma in the right upper lobe. Lungs otherwise clear.", {}),
    ("Degenerative changes of the thoracic spine. No pneumothorax.", {"Pneumothorax": N}),
    ("Stable 1.5 cm nodule in the left upper lobe.", {"Lung Lesion": P}),
    ("Small bilateral pleural effusions with bibasilar atelectasis.", {"Pleural Effusion": P, "Atelectasis": P}),
    # "stent" inside "consistent" is no device.
    ("Mild pulmonary edema, consistent with fluid overload.", {"Edema": P}),
]


@pytest.mark.parametrize("report, expected", CASES, ids=[c[0][:40] for c in CASES])
def test_hand_written_reports(report, expected):
    labels = label_report(report)
    for name in CHEXPERT_OBSERVATIONS:
        want = expected.get(name, math.nan)
        got = labels[name]
        assert (math.isnan(want) and math.isnan(got)) or got == want, f"{name}: got {got}, want {want}"


def test_observation_names_match_the_shared_vocabulary():
    assert CHEXPERT_OBSERVATIONS == CHEXPERT_FINDINGS


def test_sentences_mentions_and_array_output():
    assert split_sentences("Heart 1.5 cm. No effusion; clear!\nok") == ["heart 1.5 cm", "no effusion", "clear", "ok"]
    mentions = extract_mentions("No pleural effusion. Mild cardiomegaly.")
    found = {(m.observation, m.sentence, m.label) for m in mentions}
    assert found >= {("Pleural Effusion", 0, 0.0), ("Cardiomegaly", 1, 1.0)}
    array = label_reports(["Mild cardiomegaly.", "No pleural effusion."])
    assert array.shape == (2, 14)
    assert array[0, CHEXPERT_OBSERVATIONS.index("Cardiomegaly")] == 1.0
    assert np.isnan(array[0, 0]) and array[1, 0] == 1.0
    assert label_reports([]).shape == (0, 14)


def test_labels_from_mesh_mapping():
    labels = labels_from_mesh(
        ["Cardiomegaly/borderline", "Opacity/lung/base/left", "Opacity/mediastinum", "Thickening/pleura/apex",
         "Catheters, Indwelling/right", "Calcified Granuloma/lung"]
    )
    assert labels["Cardiomegaly"] == U and labels["Lung Opacity"] == P and labels["Pleural Other"] == P
    assert labels["Support Devices"] == P and math.isnan(labels["Lung Lesion"]) and math.isnan(labels["No Finding"])
    assert labels_from_mesh(["normal"])["No Finding"] == P
    assert labels_from_mesh(["Cicatrix/pleura"])["Pleural Other"] == P
    assert math.isnan(labels_from_mesh(["Cicatrix/pleura"])["Lung Opacity"])
    assert labels_from_mesh(["Cardiomegaly/borderline", "Cardiomegaly/mild"])["Cardiomegaly"] == P


@pytest.mark.realdata
def test_agreement_with_iu_mesh_labels(shared_data_dir):
    rows = [json.loads(line) for line in (shared_data_dir / "iu_xray" / "manifest.jsonl").open()]
    rows = [r for r in rows if r["split"] == "test" and r["mesh_major"] and r["mesh_major"] != ["No Indexing"]]
    texts = [" ".join(filter(None, [r["findings"], r["impression"]])) for r in rows]
    predicted = label_reports(texts) == 1
    mesh = np.array([[labels_from_mesh(r["mesh_major"])[n] for n in CHEXPERT_OBSERVATIONS] for r in rows]) == 1
    assert len(rows) > 500
    for name in ("No Finding", "Cardiomegaly", "Pleural Effusion", "Atelectasis"):
        i = CHEXPERT_OBSERVATIONS.index(name)
        tp = (predicted[:, i] & mesh[:, i]).sum()
        f1 = 2 * tp / (predicted[:, i].sum() + mesh[:, i].sum())
        assert f1 > 0.8, f"{name}: F1 {f1:.3f} against MeSH"


def _assert_labels(report, expected):
    labels = label_report(report)
    for name in CHEXPERT_OBSERVATIONS:
        want, got = expected.get(name, math.nan), labels[name]
        assert (math.isnan(want) and math.isnan(got)) or got == want, f"{report!r} {name}: got {got}, want {want}"


@pytest.mark.parametrize(
    "report, expected",
    [
        ("Cardiomegaly is not excluded.", {"Cardiomegaly": U}),
        ("Pneumonia is not ruled out.", {"Pneumonia": U}),
        ("Pneumonia not excluded.", {"Pneumonia": U}),
        ("Small effusion is not entirely excluded.", {"Pleural Effusion": U}),
        ("Right basilar pneumonia has not been ruled out.", {"Pneumonia": U}),
        ("Pneumothorax cannot be excluded.", {"Pneumothorax": U}),
        # Still negative: "excluded" without a negator, and plain post-mention negation.
        ("Pneumothorax is excluded.", {"Pneumothorax": N, "No Finding": P}),
        ("Pneumothorax is not seen.", {"Pneumothorax": N, "No Finding": P}),
        # The hedge belongs to pneumonia only.
        ("Effusion is present and pneumonia is not excluded.", {"Pleural Effusion": P, "Pneumonia": U}),
    ],
)
def test_not_excluded_after_the_mention_is_uncertain(report, expected):
    # The uncertain verdict also keeps "No Finding" blank (no entry in expected = NaN).
    _assert_labels(report, expected)


@pytest.mark.parametrize(
    "report",
    [
        "No change in bilateral pleural effusions.",
        "No interval change in bilateral pleural effusions.",
        "No significant interval change in bilateral pleural effusions.",
        "No significant appreciable interval change in bilateral pleural effusions.",
        "Without significant interval change in bilateral pleural effusions.",
        "Bilateral pleural effusions, not significantly changed.",
    ],
)
def test_pseudo_negation_allows_any_run_of_change_modifiers(report):
    _assert_labels(report, {"Pleural Effusion": P})


def test_pseudo_negation_still_leaves_real_negation_alone():
    # A finding word between "no" and "change" is negated, not skipped as a modifier.
    _assert_labels("No effusion or change in the heart.", {"Pleural Effusion": N, "No Finding": P})


@pytest.mark.parametrize(
    "report, expected",
    [
        ("Small left pleural effusion, if present.", {"Pleural Effusion": U}),
        ("Small left pleural effusion if present.", {"Pleural Effusion": U}),
        ("Minimal bibasilar atelectasis, if any.", {"Atelectasis": U}),
        # Negation wins: "if any" doubts the finding's existence, which the "no" already denies.
        ("No large effusion, if any.", {"Pleural Effusion": N, "No Finding": P}),
        # The hedge covers the phrase it follows, not an earlier one set off by a comma.
        ("Mild cardiomegaly, trace effusion, if any.", {"Cardiomegaly": P, "Pleural Effusion": U}),
    ],
)
def test_if_present_and_if_any_are_uncertainty_cues(report, expected):
    _assert_labels(report, expected)
