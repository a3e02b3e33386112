"""Files the tests read, all inside the repository."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AZURE_TRACE = REPO / "costflux/data/azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv"
#: Real NVML readings from an H100 (idle, under load, allocated but idle); see its SOURCE.txt.
NVML_H100 = REPO / "tests/fixtures/nvml_h100/nvml_h100_readings.jsonl"
