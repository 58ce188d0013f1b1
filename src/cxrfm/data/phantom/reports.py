"""Templated radiology reports for phantom cases, in English (IU-Xray style) and Chinese.

:func:`compose_report` turns the findings a phantom drew (with their side, size, lobe, diameter)
into a findings section and an impression, choosing among phrasings with a random generator so
that reports vary between seeds the way radiologists' wording does. Normal cases get normal
reports. Sides are the patient's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LOBE_NAMES_EN: dict[str, str] = {
    "RUL": "right upper lobe",
    "RML": "right middle lobe",
    "RLL": "right lower lobe",
    "LUL": "left upper lobe",
    "LLL": "left lower lobe",
}
LOBE_NAMES_ZH: dict[str, str] = {"RUL": "右肺上叶", "RML": "右肺中叶", "RLL": "右肺下叶", "LUL": "左肺上叶", "LLL": "左肺下叶"}
SIDE_ZH: dict[str, str] = {"left": "左侧", "right": "右侧", "bilateral": "双侧"}
SIZE_ZH: dict[str, str] = {"small": "少量", "moderate": "中等量", "large": "大量"}

# Most urgent first, as impressions are ordered.
IMPRESSION_ORDER: tuple[str, ...] = (
    "Pneumothorax",
    "Consolidation",
    "Lung Opacity",
    "Pleural Effusion",
    "Nodule",
    "Cardiomegaly",
)


@dataclass(frozen=True)
class PhantomReport:
    findings_en: str
    impression_en: str
    findings_zh: str
    impression_zh: str


# --- English phrase banks --------------------------------------------------------------------

_HEART_NORMAL = (
    "The heart is normal in size.",
    "Heart size is within normal limits.",
    "Normal heart size.",
    "The cardiac silhouette is normal in size.",
)
_MEDIASTINUM_NORMAL = (
    "The mediastinum is unremarkable.",
    "Mediastinal contours are normal.",
    "The mediastinal contour is within normal limits.",
)
_CARDIOMEDIASTINAL_NORMAL = (
    "The cardiomediastinal silhouette is within normal limits.",
    "The cardiac silhouette and mediastinum size are within normal limits.",
    "Normal cardiomediastinal contours.",
)
_HEART_ENLARGED = (
    "The heart is {adverb} enlarged.",
    "The cardiac silhouette is {adverb} enlarged.",
    "{Grade} cardiomegaly.",
)
_LUNGS_CLEAR = (
    "The lungs are clear.",
    "Lungs are clear bilaterally.",
    "There is no focal airspace consolidation.",
    "No focal consolidation.",
    "The lungs are clear without focal airspace disease.",
)
_CONSOLIDATION = (
    "There is consolidation in the {lobe}.",
    "Focal airspace consolidation is present in the {lobe}.",
    "There is dense airspace opacity in the {lobe} consistent with consolidation.",
)
_OPACITY = (
    "There is a hazy opacity in the {lobe}.",
    "Patchy airspace opacity is seen in the {lobe}.",
    "There is an ill-defined opacity in the {lobe}.",
)
_NODULE = (
    "There is a {diameter} cm nodule in the {lobe}.",
    "A well-circumscribed {diameter} cm nodular opacity is present in the {lobe}.",
    "There is a rounded {diameter} cm nodule projecting over the {lobe}.",
)
_EFFUSION = (
    "There is a {size} {side} pleural effusion.",
    "{Size} {side} pleural effusion is present.",
    "There is a {size} {side} pleural effusion with blunting of the {side} costophrenic angle.",
)
_EFFUSION_BILATERAL = (
    "There are {size} bilateral pleural effusions.",
    "{Size} bilateral pleural effusions are present.",
    "There are {size} pleural effusions bilaterally with blunting of the costophrenic angles.",
)
_NO_EFFUSION = ("No pleural effusion.", "There is no pleural effusion.", "No pleural effusions are seen.")
_PNEUMOTHORAX = (
    "There is a {size} {side} pneumothorax.",
    "{Size} {side}-sided pneumothorax is present.",
    "A {size} {side} pneumothorax is seen, with a visible pleural line and absent lung markings peripherally.",
)
_NO_PNEUMOTHORAX = ("No pneumothorax.", "There is no pneumothorax.", "There is no evidence of pneumothorax.")
_PLEURA_NORMAL = (
    "No pleural effusion or pneumothorax.",
    "There is no pneumothorax or pleural effusion.",
    "There is no pleural effusion or pneumothorax.",
)
_BONES = (
    "The osseous structures are intact.",
    "No acute bony abnormality.",
    "Visualized osseous structures are unremarkable.",
    "The bony thorax is intact.",
)
_IMPRESSION_NORMAL = (
    "No acute cardiopulmonary abnormality.",
    "No acute cardiopulmonary disease.",
    "No active disease.",
    "No acute cardiopulmonary process.",
    "Normal chest radiograph.",
)

# --- Chinese phrase banks --------------------------------------------------------------------

_HEART_NORMAL_ZH = ("心影大小、形态未见异常。", "心影不大。", "心脏大小正常。")
_MEDIASTINUM_ZH = ("纵隔居中，未见增宽。", "纵隔未见明显异常。")
_HEART_ENLARGED_ZH = ("心影{degree}增大，心胸比约{ctr}。", "心影{degree}增大。")
_LUNGS_CLEAR_ZH = ("双肺纹理清晰，未见明显实变影。", "两肺野清晰，未见异常密度影。", "双肺未见明显实质性病变。")
_CONSOLIDATION_ZH = ("{lobe}见片状实变影。", "{lobe}可见大片状密度增高影，边界模糊。")
_OPACITY_ZH = ("{lobe}见斑片状模糊影。", "{lobe}见淡薄磨玻璃样密度增高影。")
_NODULE_ZH = ("{lobe}见一类圆形结节影，直径约{diameter}cm，边界清晰。", "{lobe}可见一结节状高密度影，大小约{diameter}cm，边缘光整。")
_EFFUSION_ZH = ("{side}{size}胸腔积液，{side}肋膈角变钝。", "{side}胸腔见{size}积液，肋膈角消失。")
_PNEUMOTHORAX_ZH = ("{side}气胸，肺组织压缩约{percent}%。", "{side}胸腔见无肺纹理透亮区及脏层胸膜线，肺组织压缩约{percent}%。")
_PLEURA_NORMAL_ZH = ("双侧肋膈角锐利，未见胸腔积液及气胸。", "双侧膈面光整，肋膈角锐利，未见气胸。")
_NO_EFFUSION_ZH = ("双侧肋膈角锐利。", "未见胸腔积液。")
_NO_PNEUMOTHORAX_ZH = ("未见气胸。",)
_BONES_ZH = ("骨性胸廓未见明显异常。", "所见骨骼未见明显骨折征象。")
_IMPRESSION_NORMAL_ZH = ("心肺膈未见明显异常。", "胸部正位片未见明显异常。", "双肺、心、膈未见异常。")

_GRADE_EN = {"mild": ("mildly", "Mild"), "moderate": ("moderately", "Moderate"), "marked": ("markedly", "Marked")}
_GRADE_ZH = {"mild": "轻度", "moderate": "", "marked": "明显"}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _grade(severity: float) -> str:
    return "mild" if severity < 0.4 else ("moderate" if severity < 0.75 else "marked")


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _percent(collapse: float) -> int:
    return max(5, int(round(collapse * 20)) * 5)


def compose_report(findings: Mapping[str, Mapping[str, Any]], rng: np.random.Generator) -> PhantomReport:
    """English and Chinese findings + impression for the given drawn findings.

    Args:
        findings: ``{name: options}`` as in ``PhantomCase.meta["findings"]``: ``severity``, and
            where relevant ``side`` (patient's), ``size``, ``lobe`` (RUL/RML/RLL/LUL/LLL),
            ``diameter_cm``, ``ctr``, ``collapse``. Empty for a normal case.
        rng: chooses among phrasings.
    """
    english = _findings_en(findings, rng)
    chinese = _findings_zh(findings, rng)
    impression_en, impression_zh = _impressions(findings, rng)
    return PhantomReport(" ".join(english), impression_en, "".join(chinese), impression_zh)


def _findings_en(findings: Mapping[str, Mapping[str, Any]], rng: np.random.Generator) -> list[str]:
    heart: list[str] = []
    if "Cardiomegaly" in findings:
        adverb, grade = _GRADE_EN[_grade(findings["Cardiomegaly"]["severity"])]
        heart.append(_pick(rng, _HEART_ENLARGED).format(adverb=adverb, Grade=grade))
        if rng.random() < 0.6:
            heart.append(_pick(rng, _MEDIASTINUM_NORMAL))
    elif rng.random() < 0.5:
        heart.append(_pick(rng, _CARDIOMEDIASTINAL_NORMAL))
    else:
        heart += [_pick(rng, _HEART_NORMAL), _pick(rng, _MEDIASTINUM_NORMAL)]
    lungs = []
    for name, bank in (("Consolidation", _CONSOLIDATION), ("Lung Opacity", _OPACITY), ("Nodule", _NODULE)):
        if name in findings:
            options = findings[name]
            lobe = LOBE_NAMES_EN[options["lobe"]]
            lungs.append(_pick(rng, bank).format(lobe=lobe, diameter=options.get("diameter_cm", "")))
    if not lungs:
        lungs.append(_pick(rng, _LUNGS_CLEAR))
    pleura = _pleura_en(findings, rng)
    body = heart + lungs if rng.random() < 0.75 else lungs + heart
    sentences = body + pleura
    if rng.random() < 0.5:
        sentences.append(_pick(rng, _BONES))
    return sentences


def _pleura_en(findings: Mapping[str, Mapping[str, Any]], rng: np.random.Generator) -> list[str]:
    effusion, pneumothorax = findings.get("Pleural Effusion"), findings.get("Pneumothorax")
    if effusion is None and pneumothorax is None and rng.random() < 0.5:
        return [_pick(rng, _PLEURA_NORMAL)]
    out = []
    if effusion is None:
        out.append(_pick(rng, _NO_EFFUSION))
    else:
        bank = _EFFUSION_BILATERAL if effusion["side"] == "bilateral" else _EFFUSION
        size = effusion["size"]
        out.append(_pick(rng, bank).format(size=size, Size=_capitalise(size), side=effusion["side"]))
    if pneumothorax is None:
        out.append(_pick(rng, _NO_PNEUMOTHORAX))
    else:
        size = pneumothorax["size"]
        out.append(_pick(rng, _PNEUMOTHORAX).format(size=size, Size=_capitalise(size), side=pneumothorax["side"]))
    return out


def _findings_zh(findings: Mapping[str, Mapping[str, Any]], rng: np.random.Generator) -> list[str]:
    out = []
    lungs = []
    for name, bank in (("Consolidation", _CONSOLIDATION_ZH), ("Lung Opacity", _OPACITY_ZH), ("Nodule", _NODULE_ZH)):
        if name in findings:
            options = findings[name]
            lungs.append(_pick(rng, bank).format(lobe=LOBE_NAMES_ZH[options["lobe"]], diameter=options.get("diameter_cm", "")))
    out += lungs or [_pick(rng, _LUNGS_CLEAR_ZH)]
    if "Cardiomegaly" in findings:
        options = findings["Cardiomegaly"]
        ctr = f"{options.get('ctr', 0.55):.2f}"
        out.append(_pick(rng, _HEART_ENLARGED_ZH).format(degree=_GRADE_ZH[_grade(options["severity"])], ctr=ctr))
    else:
        out.append(_pick(rng, _HEART_NORMAL_ZH))
    out.append(_pick(rng, _MEDIASTINUM_ZH))
    effusion, pneumothorax = findings.get("Pleural Effusion"), findings.get("Pneumothorax")
    if effusion is None and pneumothorax is None:
        out.append(_pick(rng, _PLEURA_NORMAL_ZH))
    else:
        if effusion is None:
            out.append(_pick(rng, _NO_EFFUSION_ZH))
        else:
            out.append(_pick(rng, _EFFUSION_ZH).format(side=SIDE_ZH[effusion["side"]], size=SIZE_ZH[effusion["size"]]))
        if pneumothorax is None:
            out.append(_pick(rng, _NO_PNEUMOTHORAX_ZH))
        else:
            percent = _percent(pneumothorax.get("collapse", 0.3))
            out.append(_pick(rng, _PNEUMOTHORAX_ZH).format(side=SIDE_ZH[pneumothorax["side"]], percent=percent))
    if rng.random() < 0.5:
        out.append(_pick(rng, _BONES_ZH))
    return out


def _impressions(findings: Mapping[str, Mapping[str, Any]], rng: np.random.Generator) -> tuple[str, str]:
    if not findings:
        return _pick(rng, _IMPRESSION_NORMAL), _pick(rng, _IMPRESSION_NORMAL_ZH)
    english, chinese = [], []
    for name in IMPRESSION_ORDER:
        if name in findings:
            en, zh = _impression_item(name, findings[name], rng)
            english.append(en)
            chinese.append(zh)
    if len(english) > 1 and rng.random() < 0.4:
        return (
            " ".join(f"{i}. {text}" for i, text in enumerate(english, 1)),
            "".join(f"{i}. {text}" for i, text in enumerate(chinese, 1)),
        )
    return " ".join(english), "".join(chinese)


def _impression_item(name: str, options: Mapping[str, Any], rng: np.random.Generator) -> tuple[str, str]:
    lobe_en = LOBE_NAMES_EN.get(options.get("lobe", ""), "")
    lobe_zh = LOBE_NAMES_ZH.get(options.get("lobe", ""), "")
    side = options.get("side", "")
    size = options.get("size", "")
    if name == "Cardiomegaly":
        grade = _GRADE_EN[_grade(options["severity"])][1]
        return _pick(rng, ("Cardiomegaly.", f"{grade} cardiomegaly.")), "心影增大。"
    if name == "Pleural Effusion":
        noun = "pleural effusions" if side == "bilateral" else "pleural effusion"
        return f"{_capitalise(size)} {side} {noun}.", f"{SIDE_ZH[side]}{SIZE_ZH[size]}胸腔积液。"
    if name == "Pneumothorax":
        percent = _percent(options.get("collapse", 0.3))
        return f"{_capitalise(size)} {side} pneumothorax.", f"{SIDE_ZH[side]}气胸，肺组织压缩约{percent}%。"
    if name == "Consolidation":
        return _pick(rng, (f"{_capitalise(lobe_en)} consolidation.", f"Focal consolidation in the {lobe_en}.")), f"{lobe_zh}实变。"
    if name == "Lung Opacity":
        return _pick(rng, (f"{_capitalise(lobe_en)} airspace opacity.", f"Patchy opacity in the {lobe_en}.")), f"{lobe_zh}斑片影。"
    diameter = options.get("diameter_cm", "")
    follow_up = _pick(rng, ("", " Recommend CT for further evaluation."))
    return f"{diameter} cm {lobe_en} nodule.{follow_up}", f"{lobe_zh}结节（直径约{diameter}cm），建议CT进一步检查。"
