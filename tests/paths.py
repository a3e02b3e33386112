"""Files the tests read, all inside the repository."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AZURE_TRACE = REPO / "costflux/data/azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv"
