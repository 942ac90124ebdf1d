"""Where evaluation, prompting and tokenizers run by default: mmllm.runtime."""

import pytest
import torch

from mmllm.runtime import resolve_device, resolve_dtype


def test_auto_device_and_dtype_follow_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_device("cuda:1") == "cuda:1" and resolve_dtype("fp32", "cuda") == torch.float32
    with pytest.raises(ValueError, match="dtype 'half': expected auto or one of fp32, bf16, fp16"):
        resolve_dtype("half", "cpu")
