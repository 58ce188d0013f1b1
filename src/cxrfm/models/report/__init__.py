"""Report generation: R2Gen memory-driven Transformer (``r2gen``) and greedy/beam search (``decoding``)."""

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

__all__ = [
    "REPORT_PRESETS",
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
