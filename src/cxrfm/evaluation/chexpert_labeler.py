"""Offline rule-based labeler for the 14 CheXpert observations (CheXpert-labeler style, own rules).

For each report it returns, per observation, ``1`` positive, ``0`` negative, ``-1`` uncertain or
``NaN`` blank (not mentioned). Stages, as in the CheXpert labeler (Irvin et al. 2019):

1. **Mention extraction** -- lowercased text is cut into sentences (``. ; ? !``, line breaks; not
   decimal points) and each observation's phrase patterns are searched (:data:`MENTIONS`). Some
   observations are also mentioned through a *subject* that needs a descriptor in the same
   sentence (:data:`SUBJECTS`): "heart size is normal" is a negative Cardiomegaly mention, "the
   mediastinum is widened" a positive Enlarged Cardiomediastinum one, "heart size is borderline" an
   uncertain one; a subject without descriptor ("the heart and lungs") is no mention.
2. **Classification** of each mention, first rule that fires wins:
   uncertainty that looks like negation, before the mention ("cannot exclude", "no new") or after
   it ("is not excluded", "has not been ruled out")
   -> negation cue in scope before the mention ("no", "without", "free of", "negative for", "not",
   "no evidence of", ...) or right after it ("is not seen", "has resolved", "is excluded", ...)
   -> uncertainty cue in scope before the mention ("may", "possible", "likely", "suspicious for",
   "versus", ...) or after it ("is suspected", "cannot be excluded", ...)
   -> a trailing hedge "if present" / "if any" on the mention's phrase ("small effusion, if
   present") -> positive. CheXpert's labeler has no rule for these hedges (it calls "small
   effusion, if present" positive); here they are uncertain, since the radiologist doubts the
   finding exists. They rank below negation, so "no large effusion, if any" stays negative: the
   hedge doubts existence, which the "no" already denies.
   Phrases such as "no change", "no significant interval change" (any run of modifiers from
   :data:`_CHANGE_MODIFIER` between "no"/"without"/"not" and the change word) are masked first so
   they negate nothing (NegEx pseudo-negations): the effusions of "no significant interval change
   in bilateral effusions" are present.
   A cue's scope runs from the cue to the end of its clause: clauses end at "but", "however",
   "which", "with", "there is/are", "although", ... and at a comma followed by a word that
   starts a new statement ("mild", "stable", "the", ...) unless an "or"/"nor" later in the sentence
   shows a list still running -- so the "no" of "no consolidation, large effusion, or
   pneumothorax" covers all three, but not "mild cardiomegaly" in "no effusion, mild
   cardiomegaly". Post-mention cues only look up to the next comma.
3. **Aggregation** per observation (CheXpert's): any positive mention -> 1, else any uncertain -> -1,
   else 0; no mention -> blank. Like CheXpert, a positive or uncertain "heart failure"/"CHF"
   (an Edema mention) also makes Cardiomegaly uncertain unless Cardiomegaly is otherwise positive.
   **No Finding** is 1 when no observation other than Support Devices is positive or uncertain
   *and* no other abnormality from :data:`OTHER_ABNORMALITIES` (granuloma, degenerative change,
   emphysema, scoliosis, hernia, ... -- CheXpert's "no finding" blockers) is mentioned positively
   or uncertainly; otherwise it is blank (CheXpert never labels No Finding 0).

Known limits: no syntax parse, so scope is approximate; "lymph XXXX" style de-identified words
hide mentions. Agreement with IU-Xray's MeSH labels is in ``BENCHMARKS.md`` (Report generation)
(``benchmarks/labeler_agreement.py``). :func:`labels_from_mesh` documents that MeSH mapping.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cxrfm.vocabulary import CHEXPERT_FINDINGS

# The shared list (cxrfm.vocabulary), under the name the labeler literature uses.
CHEXPERT_OBSERVATIONS: tuple[str, ...] = CHEXPERT_FINDINGS
POSITIVE, NEGATIVE, UNCERTAIN, BLANK = 1.0, 0.0, -1.0, float("nan")

# ----- mention phrases (regular expressions over lowercased text) -----
MENTIONS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"(?:widen\w*|enlarge\w*) (?:of )?(?:the )?(?:superior |upper )?(?:cardio)?mediastin\w*",
        r"mediastinal (?:widening|enlargement)",
    ],
    "Cardiomegaly": [
        r"cardiomegaly",
        r"cardiac (?:enlargement|hypertrophy)",
        r"(?:enlarged|large) (?:heart|cardiac (?:silhouette|shadow|contour|size))",
        r"enlargement of the (?:heart|cardiac silhouette)",
    ],
    "Lung Opacity": [
        r"(?<!nodular )opaci\w*",
        r"infiltra\w*",
        r"air[- ]?space (?:disease|process|opaci\w*)",
        r"(?<!nodular )(?<!bone )(?<!soft tissue )(?<!calcified )densit(?:y|ies)",
        r"haz(?:y|iness)",
        r"ground[- ]glass",
        r"interstitial (?:marking|opaci|prominence|pattern|lung disease|disease|change|thickening)\w*",
        r"reticula\w*",
        r"(?<!pleural )(?<!pleural-parenchymal )(?<!pleuroparenchymal )scar(?:s|ring|red)?\b",
        r"peribronchial (?:thickening|cuffing)",
    ],
    "Lung Lesion": [
        r"nodul\w*",
        r"\bmass(?:es)?\b",
        r"nodular (?:density|densities|opaci\w*)",
        r"(?<!bony )(?<!osseous )(?<!lytic )(?<!sclerotic )(?<!blastic )(?<!skin )lesions?\b",
        r"tumou?r",
        r"carcinoma",
        r"neoplasm",
        r"cavitar\w*",
        r"metasta\w*",
    ],
    "Edema": [
        r"edema",
        r"heart failure",
        r"\bchf\b",
        r"(?:vascular|venous|pulmonary) congestion",
        r"congestive",
        r"vascular (?:prominence|engorgement|indistinctness)",
        r"indistinct\w* (?:of )?(?:the )?(?:pulmonary )?vascula\w*",
        r"cephalization",
        r"kerley",
    ],
    "Consolidation": [r"consolidat\w*"],
    "Pneumonia": [r"pneumonia\w*", r"pneumonitis", r"(?<!granulomatous )infecti\w*"],
    "Atelectasis": [r"atelecta\w*", r"\bcollapse\w*"],
    "Pneumothorax": [r"pneumothora\w*", r"hydropneumothora\w*"],
    "Pleural Effusion": [
        r"(?<!pericardial )effusions?",
        r"hydrothora\w*",
        r"pleural fluid",
    ],
    "Pleural Other": [
        r"pleural (?:thickening|scar\w*|plaques?|calcification\w*|reaction)",
        r"(?:pleural-parenchymal|pleuroparenchymal|pleuro-parenchymal) scar\w*",
        r"fibrothorax",
        r"apical (?:pleural )?cap",
        r"thickening of the pleura",
    ],
    "Fracture": [r"fractur\w*"],
    "Support Devices": [
        r"pacemaker",
        r"\bpacer\b",
        r"defibrillator",
        r"\bicd\b",
        r"\bpicc\b",
        r"(?:central venous|venous|port|dialysis|swan[- ]ganz|jugular|subclavian) (?:line|catheter)s?",
        r"catheters?",
        r"(?:endotracheal|tracheostomy|nasogastric|feeding|chest|enteric|\bet|\bng) tubes?",
        r"\bports?\b",
        r"port-?a-?cath",
        r"mediport",
        r"\bleads?\b",
        r"stents?\b",
        r"\bdevices?\b",
        r"monitor(?:ing)? leads",
        r"prosthe\w*",
        r"(?:valve|valvular) (?:replacement|prosthesis)",
        r"stimulator",
        r"tub(?:e|es|ing)\b",
        r"shunt\b",
        # IU's de-identification often hides the device ("left chest XXXX with tip in the SVC").
        r"tip (?:projecting|projects|overl\w*|in|at|near|terminat\w*|is|positioned|ends?)\b",
    ],
}

# Subjects that become mentions only with a descriptor in the sentence (see _SUBJECT_DESCRIPTOR).
SUBJECTS: dict[str, list[str]] = {
    "Cardiomegaly": [
        r"heart(?! failure)(?: size)?",
        r"cardiac (?:size|silhouette|shadow|contours?|diameter)",
        r"cardiac and mediastinal (?:contours?|silhouettes?)",
    ],
    "Enlarged Cardiomediastinum": [
        r"cardio ?mediastinal (?:silhouette|contour|shadow|size|width|structures)s?",
        r"cardiomediastinum",
        r"mediastinal (?:silhouette|contour|width|shadow|structures|size)s?",
        r"mediastinum",
    ],
}
_SUBJECT_DESCRIPTOR = re.compile(
    r"(?P<uncertain>borderline|upper limits? of normal|upper normal|upper range of normal|top (?:of )?normal"
    r"|top-normal)"
    r"|(?P<positive>enlarge\w*|widen\w*|large|increased|cardiomegaly|prominen\w*)"
    r"|(?P<negative>normal|unremarkable|within normal limits|small)"
    r"|(?P<neutral>stable|unchanged)"
)

# Abnormalities that are none of the 14 observations but keep "No Finding" from being positive.
OTHER_ABNORMALITIES: list[str] = [
    r"emphysema\w*", r"blunt\w*", r"scolio\w*", r"degenerat\w*", r"calcifi\w*", r"hyperinflat\w*",
    r"hyperexpan\w*", r"hyperaerat\w*", r"overinflat\w*", r"hyperlucen\w*", r"flatten\w*", r"\bcopd\b",
    r"chronic obstructive", r"hernia", r"plaques?", r"osteophyt\w*", r"spondylo\w*", r"spurring",
    r"granulom\w*", r"thicken\w*", r"aspiration", r"bullae|bulla\b|bullous", r"kyphos\w*|kyphotic",
    r"deformit\w*", r"volume loss", r"(?:low|decreased|diminished|reduced) (?:lung )?volumes?",
    r"hypoinflat\w*|underinflat\w*|hypoventilat\w*|hypoaerat\w*", r"eventration", r"elevat\w*",
    r"tortu\w*", r"ectasia|ectatic", r"unfold\w*", r"atherosclero\w*", r"osteopeni\w*|osteoporo\w*",
    r"pneumomediastinum|pneumoperitoneum|free air", r"fibros\w*|fibrotic", r"bronchiectasis",
    r"adenopathy", r"enlarge\w*", r"prominen\w*", r"dilat\w*", r"widen\w*", r"sternotomy",
    r"postsurgical|post-surgical|postoperative|status post", r"abnormal\w*", r"chronic",
    r"cardiomegaly", r"aneurysm\w*", r"lucenc\w*", r"cyst\w*", r"effusion", r"interstitial",
]

# ----- cues -----
# Words that may stand, in any number, between "no"/"without"/"not" and "change": "no significant
# interval change in the effusions" negates the change, not the effusions. A closed list, because a
# finding word there ("no effusion or change") must stay negated.
_CHANGE_MODIFIER = (
    r"(?:significant|significantly|interval|appreciable|appreciably|substantial|substantially|definite|definitely"
    r"|major|marked|notable|relevant|further|acute|obvious|apparent|radiographic|radiographically|measurable"
    r"|visible|detectable|discernible|gross|overall|meaningful|important|clinically|short-term|recent) "
)
_PSEUDO_NEGATION = re.compile(
    rf"\bno (?:{_CHANGE_MODIFIER})*(?:change|increase|decrease|worsening|progression|improvement)\w*"
    rf"|\bnot (?:{_CHANGE_MODIFIER})*changed|\bwithout (?:{_CHANGE_MODIFIER})*change"
    r"|\bnot (?:well )?(?:seen|visualized|appreciated) on (?:the )?(?:prior|previous)"
)
_UNCERTAIN_BEFORE_NEGATION = re.compile(
    r"\b(?:cannot|can not|can't|could not|not) (?:be )?(?:completely |entirely |totally )?(?:exclude|rule|ruled)\w*"
    r"|\bno new\b|\bnot (?:entirely |completely )?excluded"
)
# The same after the mention, behind its verb: "cardiomegaly is not excluded", "pneumonia has not
# been ruled out". A negator is required ("pneumothorax is excluded" is a negation).
_UNCERTAIN_NEGATION_AFTER = re.compile(
    r"^\W*(?:\w+ ){0,3}?(?:(?:is|are|was|were|has|have|had) )?"
    r"(?:not|cannot|can not|can't|could not|may not|should not) (?:be |been )?"
    r"(?:completely |entirely |totally |definitely |fully |reliably )?(?:excluded|ruled out)\b"
)
_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|absence of|absent|resolution of|resolved|removal of"
    r"|never|none|nor|neither|rather than|no evidence of|no signs? of|no xxxx of|no findings? of)\b"
)
_NEGATION_AFTER = re.compile(
    r"^\W*(?:\w+ ){0,3}?(?:(?:is|are|was|were|has|have|has been|have been)\s+)?"
    r"(?:not\b|no longer\b|resolved\b|absent\b|"
    r"removed\b|cleared\b|excluded\b|ruled out\b|(?:is|are|was|were) absent)"
)
_UNCERTAIN_BEFORE = re.compile(
    r"\b(?:may|might|could|possibl\w*|probabl\w*|likely|suspect\w*|suspicio\w*|concern\w*|question\w*"
    r"|suggest\w*|consider\w*|versus|vs|differential|indeterminate|equivocal|uncertain|borderline|presum\w*"
    r"|favor\w*|favour\w*|perhaps|maybe|cannot be differentiated"
    r"|evaluate for|evaluation for|rule out|worrisome|doubtful)\b"
)
_UNCERTAIN_AFTER = re.compile(
    r"^\W*(?:\w+ ){0,3}?(?:is|are|be|was)?\s*(?:possible|suspected|questioned|questionable|likely|not excluded"
    r"|cannot be (?:excluded|ruled out)|can not be excluded|not ruled out|(?:is|are) suggested|unlikely|versus|vs\b"
    r"|(?:would|could|may) be (?:a )?consider\w*)"
)
# "small effusion, if present" / "trace effusion, if any": the radiologist doubts the finding exists.
# The hedge covers the phrase it follows: at most one comma (its own) and no clause end between
# mention and hedge.
_HEDGE_AFTER = re.compile(r"[^,]*?,?\s*(?P<hedge>\bif (?:present|any)\b)")
# Where a cue's scope ends.
_CLAUSE_END = re.compile(
    r"\b(?:but|however|although|though|whereas|while|which|except|aside from|apart from|otherwise|"
    r"(?<!compatible )(?<!consistent )with|"
    r"there (?:is|are|has|have)|and (?:the|there)|also|in addition|"
    r"consistent with|likely|possibly|may|could|suggest\w*)\b"
)
_NEW_STATEMENT_AFTER_COMMA = re.compile(
    r",\s*(?:mild\w*|moderate\w*|severe\w*|small|large|stable|persistent|new|increas\w*|decreas\w*|minimal|minor"
    r"|slight\w*|trace|chronic|the|there|a|an|this|these|likely|probabl\w*|possibl\w*|which|left|right"
    r"|bilateral|heart|cardiac|lungs?|again)\b"
)
_LIST_CONTINUES = re.compile(r"\b(?:or|nor)\b")
_SENTENCE_SPLIT = re.compile(r"(?<!\d)\.(?!\d)|[;?!\n]")


@dataclass(frozen=True)
class Mention:
    """One mention: which observation, where in which sentence, and its classification."""

    observation: str
    sentence: int
    start: int
    end: int
    text: str
    label: float


def _compile(patterns: Iterable[str]) -> re.Pattern:
    # Every phrase starts at a word boundary ("stent" must not match inside "consistent").
    return re.compile("|".join(rf"(?:\b{p})" for p in patterns))


_MENTION_PATTERNS = {name: _compile(patterns) for name, patterns in MENTIONS.items()}
_SUBJECT_PATTERNS = {name: _compile(patterns) for name, patterns in SUBJECTS.items()}
_OTHER_PATTERN = _compile(OTHER_ABNORMALITIES)
_OTHER = "__other__"


def split_sentences(report: str) -> list[str]:
    """Lowercased sentences with whitespace collapsed (decimal points do not split)."""
    # "effusion/pneumothorax" is a list: read the slash as "or".
    text = report.lower().replace("/", " or ")
    return [" ".join(s.split()) for s in _SENTENCE_SPLIT.split(text) if s.strip()]


def _mask_pseudo_negations(sentence: str) -> str:
    # Same length, so mention offsets stay valid.
    return _PSEUDO_NEGATION.sub(lambda m: "_" * len(m.group()), sentence)


def _scope_start(sentence: str, position: int) -> int:
    """Where the clause containing ``position`` begins (cues before it do not reach the mention)."""
    start = 0
    for match in _CLAUSE_END.finditer(sentence, 0, position):
        start = max(start, match.start())
    for match in _NEW_STATEMENT_AFTER_COMMA.finditer(sentence, 0, position):
        # "no consolidation, large effusion, or pneumothorax" is still one negated list.
        if not _LIST_CONTINUES.search(sentence, match.end()):
            start = max(start, match.start())
    return start


def classify(sentence: str, start: int, end: int) -> float:
    """Label of the mention ``sentence[start:end]`` (sentence already lowercased and masked)."""
    scope = sentence[_scope_start(sentence, start) : start]
    after = sentence[end:].split(",", 1)[0]
    if _UNCERTAIN_BEFORE_NEGATION.search(scope) or _uncertain_negation_after(after):
        return UNCERTAIN
    if _NEGATION_BEFORE.search(scope) or _NEGATION_AFTER.search(after):
        return NEGATIVE
    if _UNCERTAIN_BEFORE.search(scope) or _UNCERTAIN_AFTER.search(after):
        return UNCERTAIN
    # Checked last, so that "no large effusion, if any" stays negative.
    if _hedged(sentence, end):
        return UNCERTAIN
    return POSITIVE


def _hedged(sentence: str, end: int) -> bool:
    """Whether "if present" / "if any" follows the mention ending at ``end`` in the same phrase."""
    match = _HEDGE_AFTER.match(sentence, end)
    return bool(match) and not _CLAUSE_END.search(sentence, end, match.start("hedge"))


def _uncertain_negation_after(after: str) -> bool:
    """Whether the text after a mention (up to its comma) is "... not excluded" / "cannot exclude ..."."""
    return bool(_UNCERTAIN_BEFORE_NEGATION.match(after.strip()) or _UNCERTAIN_NEGATION_AFTER.match(after))


def _descriptor_label(sentence: str, start: int, end: int) -> tuple[float, int, int] | None:
    """Label from the descriptor of a subject mention, and the mention span including it.

    Looks up to 4 words before the subject ("normal heart size") then forward to the end of the
    clause ("heart size and mediastinal contours are within normal limits").
    """
    before = sentence[max(0, start - 40) : start]
    words_before = before.split()[-4:]
    for word in reversed(words_before):
        match = _SUBJECT_DESCRIPTOR.fullmatch(word)
        if match:
            offset = start - len(before) + before.rfind(word)
            return _descriptor_value(match), offset, end
    window = sentence[end:]
    stop = _NEW_STATEMENT_AFTER_COMMA.search(window)
    clause_end = _CLAUSE_END.search(window)
    limit = min(m.start() for m in (stop, clause_end) if m) if (stop or clause_end) else len(window)
    match = _SUBJECT_DESCRIPTOR.search(window, 0, limit)
    if match is None:
        return None
    return _descriptor_value(match), start, end + match.end()


def _descriptor_value(match: re.Match) -> float | None:
    if match.group("neutral"):
        return None  # "heart size is stable" says nothing about enlargement
    if match.group("uncertain"):
        return UNCERTAIN
    return POSITIVE if match.group("positive") else NEGATIVE


def _subject_label(sentence: str, subject_end: int, start: int, end: int, value: float | None) -> float | None:
    """Combine a subject's descriptor value with cues inside ("heart is not enlarged") and around it."""
    if value is None:
        return None
    inner = sentence[subject_end:end] if subject_end < end else ""
    if _UNCERTAIN_BEFORE_NEGATION.search(inner):
        return UNCERTAIN
    if _NEGATION_BEFORE.search(inner):
        return NEGATIVE  # "not enlarged", "not widened"; "not normal" is too rare to model
    if value != NEGATIVE and _UNCERTAIN_BEFORE.search(inner):
        return UNCERTAIN  # "heart size may be enlarged"
    outer = classify(sentence, start, end)
    return value if outer == POSITIVE else outer if value != NEGATIVE else NEGATIVE


def extract_mentions(report: str) -> list[Mention]:
    """Every classified mention in ``report`` (observations, plus ``"__other__"`` abnormalities)."""
    mentions: list[Mention] = []
    for index, raw_sentence in enumerate(split_sentences(report)):
        sentence = _mask_pseudo_negations(raw_sentence)
        covered: list[tuple[int, int, str]] = []
        for name, pattern in _MENTION_PATTERNS.items():
            for match in pattern.finditer(sentence):
                label = classify(sentence, match.start(), match.end())
                mentions.append(Mention(name, index, match.start(), match.end(), match.group(), label))
                covered.append((match.start(), match.end(), name))
        for name, pattern in _SUBJECT_PATTERNS.items():
            for match in pattern.finditer(sentence):
                if any(s <= match.start() < e and n == name for s, e, n in covered):
                    continue  # "enlarged heart" is already a direct mention
                described = _descriptor_label(sentence, match.start(), match.end())
                if described is None:
                    continue
                value, span_start, span_end = described
                label = _subject_label(sentence, match.end(), span_start, span_end, value)
                if label is None:
                    continue
                mentions.append(Mention(name, index, span_start, span_end, sentence[span_start:span_end], label))
        for match in _OTHER_PATTERN.finditer(sentence):
            label = classify(sentence, match.start(), match.end())
            mentions.append(Mention(_OTHER, index, match.start(), match.end(), match.group(), label))
    return mentions


def aggregate_mentions(mentions: Sequence[Mention]) -> dict[str, float]:
    """CheXpert aggregation of mention labels into one value per observation (module docstring)."""
    found: dict[str, list[float]] = {}
    for mention in mentions:
        found.setdefault(mention.observation, []).append(mention.label)
        failure = re.fullmatch(r"heart failure|chf", mention.text)
        if mention.observation == "Edema" and mention.label != NEGATIVE and failure:
            found.setdefault("Cardiomegaly", []).append(UNCERTAIN)
    labels = {name: BLANK for name in CHEXPERT_OBSERVATIONS}
    for name, values in found.items():
        if name in labels:
            labels[name] = POSITIVE if POSITIVE in values else UNCERTAIN if UNCERTAIN in values else NEGATIVE
    findings = [
        value
        for name, value in labels.items()
        if name not in ("No Finding", "Support Devices") and not math.isnan(value)
    ]
    others = found.get(_OTHER, [])
    if not any(v in (POSITIVE, UNCERTAIN) for v in findings + others):
        labels["No Finding"] = POSITIVE
    return labels


def label_report(report: str) -> dict[str, float]:
    """``{observation: 1 | 0 | -1 | nan}`` for one report (positive / negative / uncertain / blank)."""
    return aggregate_mentions(extract_mentions(report))


def label_reports(reports: Iterable[str]) -> np.ndarray:
    """``(N, 14)`` float array in :data:`CHEXPERT_OBSERVATIONS` order, NaN = blank."""
    rows = [[label_report(report)[name] for name in CHEXPERT_OBSERVATIONS] for report in reports]
    return np.array(rows, dtype=np.float64).reshape(-1, len(CHEXPERT_OBSERVATIONS))


# ----- IU-Xray MeSH labels (for validating the labeler) -----
# Open-i "mesh_major" terms look like "Opacity/lung/base/left/mild": a heading then qualifiers.
# Heading -> observation; a term whose qualifiers include "borderline" counts as uncertain (-1).
MESH_TO_OBSERVATION: dict[str, str] = {
    "normal": "No Finding",
    "Cardiomegaly": "Cardiomegaly",
    "Opacity": "Lung Opacity",
    "Infiltrate": "Lung Opacity",
    "Airspace Disease": "Lung Opacity",
    "Density": "Lung Opacity",
    "Markings": "Lung Opacity",  # CheXpert counts (increased) interstitial markings as opacity
    "Lung Diseases, Interstitial": "Lung Opacity",
    "Cicatrix": "Lung Opacity",  # scarring: CheXpert's opacity list has "scar"; pleural scars -> Pleural Other
    "Nodule": "Lung Lesion",
    "Mass": "Lung Lesion",
    "Pulmonary Edema": "Edema",
    "Edema": "Edema",
    "Pulmonary Congestion": "Edema",
    "Heart Failure": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Pulmonary Atelectasis": "Atelectasis",
    "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Hydropneumothorax": "Pneumothorax",
    "Pleural Effusion": "Pleural Effusion",
    "Fractures, Bone": "Fracture",
    "Catheters, Indwelling": "Support Devices",
    "Implanted Medical Device": "Support Devices",
    "Medical Device": "Support Devices",
    "Tube, Inserted": "Support Devices",
    "Stents": "Support Devices",
}
# Qualified headings: (heading, qualifier) -> observation (checked before MESH_TO_OBSERVATION).
MESH_QUALIFIED: dict[tuple[str, str], str] = {
    ("Cardiac Shadow", "enlarged"): "Cardiomegaly",
    ("Heart", "enlarged"): "Cardiomegaly",
    ("Mediastinum", "enlarged"): "Enlarged Cardiomediastinum",
    ("Mediastinum", "widened"): "Enlarged Cardiomediastinum",
    ("Mediastinum", "prominent"): "Enlarged Cardiomediastinum",
    ("Thickening", "pleura"): "Pleural Other",
    ("Cicatrix", "pleura"): "Pleural Other",
    ("Hydropneumothorax", ""): "Pleural Effusion",
}
# Opacity-like headings at these sites are not lung opacities.
_NON_LUNG_SITES = {"mediastinum", "heart", "ribs", "spine", "thoracic vertebrae", "breast", "abdomen", "clavicle",
                   "sternum", "adipose tissue", "mitral valve", "paratracheal", "shoulder", "pleura", "humerus",
                   "lumbar vertebrae", "neck"}


def labels_from_mesh(terms: Iterable[str]) -> dict[str, float]:
    """Observation labels from Open-i MeSH terms: 1 named, -1 named "borderline", NaN otherwise.

    "No Indexing" or no terms -> all NaN (the report was not indexed; leave it out of agreement).
    """
    labels = {name: BLANK for name in CHEXPERT_OBSERVATIONS}
    for term in terms:
        heading, *qualifiers = [part.strip() for part in term.split("/")]
        value = UNCERTAIN if "borderline" in qualifiers else POSITIVE
        targets = {
            observation
            for (head, qualifier), observation in MESH_QUALIFIED.items()
            if head == heading and (qualifier == "" or qualifier in qualifiers)
        }
        base = MESH_TO_OBSERVATION.get(heading)
        if base == "Lung Opacity" and set(qualifiers) & _NON_LUNG_SITES:
            base = None  # e.g. "Opacity/mediastinum", "Cicatrix/pleura" (-> Pleural Other above)
        if base is not None:
            targets.add(base)
        for observation in sorted(targets):
            current = labels[observation]
            labels[observation] = value if math.isnan(current) else max(current, value)
    return labels
