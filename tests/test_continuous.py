"""Continuous-input baseline: frame stacking, placeholder splicing, features cached like codes."""

import numpy as np
import pytest
import torch
from tiny_models import tiny_llama

from mmllm.continuous import AudioProjector, ContinuousInputLM, load_projector, save_projector
from mmllm.templates import TemplateRenderer, stack_frames
from mmllm.tokenizers.base import TokenizerConfig, build_tokenizer
from mmllm.vocab import MultimodalVocab

VOCAB = MultimodalVocab(40, [("out", 1, 8)])


def test_stack_frames_by_hand():
    features = np.arange(10, dtype=np.float32).reshape(2, 5)  # D=2, F=5
    stacked = stack_frames(features, 2)
    # frames (0,5) (1,6) | (2,7) (3,8) | (4,9) (0,0)
    np.testing.assert_array_equal(stacked, [[0, 5, 1, 6], [2, 7, 3, 8], [4, 9, 0, 0]])
    np.testing.assert_array_equal(stack_frames(features, 1), features.T)


def tiny_model():
    lm = tiny_llama(VOCAB.size)
    return ContinuousInputLM(lm, AudioProjector(6, 16, 8), VOCAB.audio_embed_id)


def test_placeholders_take_projected_features_and_train_the_projector():
    model = tiny_model()
    slot = VOCAB.audio_embed_id
    ids = torch.tensor([[1, VOCAB.audio_start_id, slot, slot, VOCAB.audio_end_id, 2]])
    features = torch.randn(2, 6)
    captured = {}

    def capture(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs["hidden_states"]  # the layer's input

    model.lm.model.layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    out = model(ids, audio_features=features)
    hidden = captured["h"][0]
    torch.testing.assert_close(hidden[2:4], model.projector(features))
    torch.testing.assert_close(hidden[0], model.get_input_embeddings().weight[1])
    out.logits.sum().backward()
    assert model.projector.up.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 <\\|audio_embed\\|> positions but 3 feature frames"):
        model(ids, audio_features=torch.randn(3, 6))


def test_projector_save_load_round_trip(tmp_path):
    projector = AudioProjector(6, 16, 8)
    save_projector(projector, tmp_path)
    loaded = load_projector(tmp_path)
    frames = torch.randn(4, 6)
    torch.testing.assert_close(loaded(frames), projector(frames))


def test_renderer_emits_placeholders_in_order():
    class Chars:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) % 40 for c in text]

    renderer = TemplateRenderer(
        VOCAB, Chars(), "mfcc-features", "out", continuous_input=True, feature_stack=2
    )
    enrollment = np.full((3, 4), 1.0, dtype=np.float32)  # D=3, F=4 -> 2 stacked frames
    trial = np.full((3, 3), 2.0, dtype=np.float32)  # -> 2 stacked frames (last padded)
    lookup = {"r#ref0": enrollment, "r": trial}.__getitem__
    row = {"id": "r", "task": "sv", "label": "same"}
    rendered = renderer.render(row, lookup, lookup)
    assert rendered.prompt.count(VOCAB.audio_embed_id) == 4
    assert rendered.features.shape == (4, 6)
    np.testing.assert_array_equal(rendered.features[:2], 1.0)  # enrollment comes first
    np.testing.assert_array_equal(rendered.features[3], [2, 2, 2, 0, 0, 0])
    with pytest.raises(ValueError, match="continuous input"):
        renderer.lm_document("audio", row, lookup)


def test_feature_backends_shapes_and_normalisation():
    extractor = build_tokenizer(TokenizerConfig(name="mfcc-features"))
    wav = torch.randn(2, 16000)
    features, frames = extractor.encode(wav, torch.tensor([16000, 8000]))
    assert features.shape == (2, 26, 50) and frames.tolist() == [50, 25]
    first = features[0]
    torch.testing.assert_close(first.mean(1), torch.zeros(26), atol=1e-4, rtol=0)
    torch.testing.assert_close(first.std(1, unbiased=False), torch.ones(26), atol=1e-3, rtol=0)
    assert torch.all(features[1, :, 25:] == 0)  # padding frames are zero
    assert extractor.describe()["continuous"] is True
    log_mel = build_tokenizer(TokenizerConfig(name="log-mel-features"))
    assert log_mel.encode(wav, torch.tensor([16000, 16000]))[0].shape == (2, 80, 50)
    with pytest.raises(ValueError, match="do not apply"):
        build_tokenizer(TokenizerConfig(name="mfcc-features", codebook_size=5))
