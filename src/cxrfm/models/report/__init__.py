"""Report generation: R2Gen memory-driven Transformer (``r2gen``), UAR (``uar``) and greedy/beam
search (``decoding``). :func:`load_report_generator` opens either from a saved folder."""

from pathlib import Path


from cxrfm.models.report.decoding import (
    GenerationOutput,
    SpecialTokens,
    beam_search,
    block_repeated_ngrams,
    greedy_search,
)
from cxrfm.models.report.memory import ConditionalLayerNorm, MultiHeadAttention, RelationalMemory
from cxrfm.models.report.r2gen import (
    REPORT_PRESETS,
    ReportGenerator,
    ReportGeneratorConfig,
    report_generator_config,
    report_loss,
)
from cxrfm.models.report.uar import UAR_PRESETS, UARConfig, UARGenerator, uar_config
from cxrfm.errors import CheckpointError
from cxrfm.models.pretrained import read_config_record

GENERATOR_TYPES = {"report-r2gen": ReportGenerator, "report-uar": UARGenerator}


def load_report_generator(directory: str | Path):
    """The :class:`ReportGenerator` or :class:`UARGenerator` saved in ``directory`` (by its model_type)."""
    model_type = read_config_record(directory).get("model_type")
    if model_type not in GENERATOR_TYPES:
        raise CheckpointError(directory, f"model_type {model_type!r} is not a report generator ({', '.join(GENERATOR_TYPES)})")
    return GENERATOR_TYPES[model_type].from_pretrained(directory)

__all__ = [
    "GENERATOR_TYPES",
    "REPORT_PRESETS",
    "UAR_PRESETS",
    "UARConfig",
    "UARGenerator",
    "load_report_generator",
    "uar_config",
    "ConditionalLayerNorm",
    "GenerationOutput",
    "MultiHeadAttention",
    "RelationalMemory",
    "ReportGenerator",
    "ReportGeneratorConfig",
    "SpecialTokens",
    "beam_search",
    "block_repeated_ngrams",
    "greedy_search",
    "report_generator_config",
    "report_loss",
]
