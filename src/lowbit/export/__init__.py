"""Export to files other runtimes read: GGUF for llama.cpp / Ollama (`to_gguf`)."""

from lowbit.export.gguf import ExportReport, to_gguf
from lowbit.export.gguf_types import PRESETS

__all__ = ["PRESETS", "ExportReport", "to_gguf"]
