"""Audio as embeddings: the continuous-input baseline (frame stacking, placeholder splicing,
features cached like codes) and summed codebook embeddings (K = 1 is the discrete input,
K > 1 the weighted sum by hand, gradients, save / load)."""

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_llama

from mmllm.data.packing import collate_blocks, pack_documents
from mmllm.data.templates import TemplateRenderer, stack_frames
from mmllm.data.vocab import MultimodalVocab
from mmllm.modeling.continuous import (
    PROJECTOR_CONFIG,
    AudioProjector,
    CodebookSum,
    ContinuousInputLM,
    codebook_weights,
    feature_statistics,
    load_projector,
    save_projector,
)
from mmllm.pretrain.steps import token_loss_sum
from mmllm.tokenizers.backends.features import utterance_cmvn
from mmllm.tokenizers.base import TokenizerConfig
from mmllm.tokenizers.registry import build_tokenizer

VOCAB = MultimodalVocab(40, [("out", 1, 8)])


class Chars:
    """Stand-in text tokenizer: one id per character."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 40 for c in text]


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


def test_layer_weighted_projector_by_hand(tmp_path):
    """SSL layer features: 2 stacked frames x 3 layers x 4 dims; each layer block normalised,
    summed with softmax(v), then the usual LayerNorm -> MLP on [n, 2 * 4]."""
    projector = AudioProjector(24, 5, 7, layers=[1, 3, 7], layer_dim=4)
    with torch.no_grad():
        projector.layer_weights.copy_(torch.log(torch.tensor([0.5, 0.3, 0.2])))
    frames = torch.randn(6, 24) * 10 + 3
    blocks = frames.reshape(6, 2, 3, 4)
    normalised = (blocks - blocks.mean(-1, keepdim=True)) / torch.sqrt(
        blocks.var(-1, unbiased=False, keepdim=True) + 1e-5
    )
    mixed = 0.5 * normalised[:, :, 0] + 0.3 * normalised[:, :, 1] + 0.2 * normalised[:, :, 2]
    mixed = mixed.reshape(6, 8)  # frame 0's 4 dims, then frame 1's
    by_hand = projector.down(torch.nn.functional.gelu(projector.up(projector.norm(mixed))))
    torch.testing.assert_close(projector(frames), by_hand)
    projector(frames).sum().backward()
    assert projector.layer_weights.grad.abs().sum() > 0  # the weights train
    save_projector(projector, tmp_path)
    loaded = load_projector(tmp_path)
    torch.testing.assert_close(loaded(frames), projector(frames))
    assert codebook_weights(tmp_path) == pytest.approx(
        {"layer 1": 0.5, "layer 3": 0.3, "layer 7": 0.2}
    )
    with pytest.raises(ValueError, match="in_dim 20 is not a whole number of frames of 3 layers"):
        AudioProjector(20, 5, 7, layers=[1, 3, 7], layer_dim=4)


def test_feature_statistics_by_hand():
    rows = [np.array([[1.0, 5.0], [3.0, 5.0]]), np.zeros((0, 2)), np.array([[5.0, 5.0]])]
    mean, std = feature_statistics(rows)
    torch.testing.assert_close(mean, torch.tensor([3.0, 5.0]))
    # population sd of 1, 3, 5 = sqrt(8 / 3); the constant column gets the floor
    torch.testing.assert_close(std, torch.tensor([(8 / 3) ** 0.5, 1e-5]))
    with pytest.raises(ValueError, match="no feature rows"):
        feature_statistics([np.zeros((0, 2))])


def test_corpus_norm_projector_standardises_with_its_statistics(tmp_path):
    """input_norm corpus: (x - mean) / sd per input, no LayerNorm; the statistics travel
    with the weights. Unlike a per-frame LayerNorm it keeps a frame's level: two frames
    that differ by a constant offset on every dim project differently."""
    projector = AudioProjector(4, 5, 7, input_norm="corpus")
    mean, std = torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.tensor([2.0, 0.5, 1.0, 4.0])
    projector.set_feature_statistics(mean, std)
    frames = torch.randn(6, 4) * 3
    by_hand = projector.down(torch.nn.functional.gelu(projector.up((frames - mean) / std)))
    torch.testing.assert_close(projector(frames), by_hand)
    save_projector(projector, tmp_path)
    loaded = load_projector(tmp_path)
    torch.testing.assert_close(loaded(frames), projector(frames))
    torch.testing.assert_close(loaded.feature_std, std)
    offset = frames + 1.0
    assert not torch.allclose(projector(offset), projector(frames))
    layer = AudioProjector(4, 5, 7, input_norm="layer")
    torch.testing.assert_close(layer(frames * 2 + 1), layer(frames), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="feature statistics of shape \\(3,\\)"):
        projector.set_feature_statistics(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="takes no feature statistics"):
        layer.set_feature_statistics(mean, std)
    with pytest.raises(ValueError, match="input_norm must be one of"):
        AudioProjector(4, 5, 7, input_norm="batch")


def test_match_output_scale_sets_the_output_rms_and_keeps_the_function_shape(tmp_path):
    """The last layer (weight and bias) is multiplied by one factor, so the output is the
    same function scaled; standard-normal frames in the normalised space (here: mean +
    sd * N(0, 1) before corpus standardisation) then come out at the asked rms."""
    torch.manual_seed(0)
    projector = AudioProjector(4, 16, 32, input_norm="corpus")
    mean, std = torch.tensor([10.0, -3.0, 0.0, 2.0]), torch.tensor([5.0, 0.1, 1.0, 2.0])
    projector.set_feature_statistics(mean, std)
    frames = torch.randn(8, 4) * std + mean
    before = projector(frames).detach()
    projector.match_output_scale(1.0)
    after = projector(frames).detach()
    factor = float(after.norm() / before.norm())
    torch.testing.assert_close(after, before * factor, rtol=1e-4, atol=1e-6)
    assert factor > 2  # PyTorch's default init comes out at ~0.2, well below 1.0
    save_projector(projector, tmp_path)  # the init is recorded and survives a round trip
    loaded = load_projector(tmp_path)
    assert loaded.config["output_rms"] == 1.0 and "output_rms" not in AudioProjector(4, 5, 7).config
    torch.testing.assert_close(loaded(frames), after)
    fresh = torch.randn(20_000, 4) * std + mean
    layer = AudioProjector(6, 16, 8)  # input_norm layer: any frame is normalised first
    layer.match_output_scale(0.5)
    with torch.no_grad():
        assert float(projector(fresh).pow(2).mean().sqrt()) == pytest.approx(1.0, rel=0.03)
        rms = float(layer(torch.randn(20_000, 6)).pow(2).mean().sqrt())
        assert rms == pytest.approx(0.5, rel=0.03)
    with pytest.raises(ValueError, match="target_rms must be > 0"):
        layer.match_output_scale(0.0)


def test_corpus_norm_with_ssl_layers_by_hand():
    """SSL layer blocks standardised per input, then the softmax-weighted sum, no LayerNorm."""
    projector = AudioProjector(12, 5, 7, layers=[2, 5], layer_dim=3, input_norm="corpus")
    mean, std = torch.randn(12), torch.rand(12) + 0.5
    projector.set_feature_statistics(mean, std)
    with torch.no_grad():
        projector.layer_weights.copy_(torch.log(torch.tensor([0.25, 0.75])))
    frames = torch.randn(4, 12) * 5
    blocks = ((frames - mean) / std).reshape(4, 2, 2, 3)  # [n, stack, L, D_l]
    mixed = (0.25 * blocks[:, :, 0] + 0.75 * blocks[:, :, 1]).reshape(4, 6)
    by_hand = projector.down(torch.nn.functional.gelu(projector.up(mixed)))
    torch.testing.assert_close(projector(frames), by_hand)


def test_projector_config_without_kind_loads_as_projector(tmp_path):
    """Checkpoints written before summed input existed have no "kind" in their json."""
    save_projector(AudioProjector(6, 16, 8), tmp_path)
    config = json.loads((tmp_path / PROJECTOR_CONFIG).read_text())
    del config["kind"]
    (tmp_path / PROJECTOR_CONFIG).write_text(json.dumps(config))
    assert isinstance(load_projector(tmp_path), AudioProjector)
    assert codebook_weights(tmp_path) is None


def test_renderer_emits_placeholders_in_order():
    renderer = TemplateRenderer(
        VOCAB, Chars(), "mfcc-features", "out", audio_input="continuous", feature_stack=2
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
    with pytest.raises(ValueError, match="does not use `codebook_size`"):
        build_tokenizer(TokenizerConfig(name="mfcc-features", codebook_size=5))


def test_cmvn_none_keeps_the_raw_frames_that_utterance_cmvn_normalises():
    wav = torch.randn(1, 16000) * torch.linspace(0.1, 1.0, 16000)
    raw_tokenizer = build_tokenizer(TokenizerConfig(name="mfcc-features", options={"cmvn": "none"}))
    raw, frames = raw_tokenizer.encode(wav, torch.tensor([16000]))
    assert raw_tokenizer.describe()["cmvn"] == "none"
    assert raw[0].mean(1).abs().max() > 1.0  # raw MFCCs are not centred
    normalised, _ = build_tokenizer(TokenizerConfig(name="mfcc-features")).encode(
        wav, torch.tensor([16000])
    )
    by_hand = utterance_cmvn(raw.transpose(1, 2), frames).transpose(1, 2)
    torch.testing.assert_close(normalised, by_hand)
    with pytest.raises(ValueError, match="options.cmvn must be one of"):
        build_tokenizer(TokenizerConfig(name="mfcc-features", options={"cmvn": "corpus"}))
    with pytest.raises(ValueError, match="unknown options"):
        build_tokenizer(TokenizerConfig(name="mfcc-features", options={"stack": 2}))


# ---- summed codebook embeddings (audio_input: summed) ---------------------------------------


def summed_lm(vocab, num_codebooks):
    lm = tiny_llama(vocab.size)
    embedding = lm.get_input_embeddings()
    return ContinuousInputLM(lm, CodebookSum(num_codebooks, embedding), vocab.audio_embed_id)


def codebook_weights_of(module):
    return module.weights.detach().softmax(0).tolist()


def asr_row_loss(renderer, model, codes):
    """Render an ASR row, pack it alone -> (rendered, batch, summed token loss)."""
    rendered = renderer.render({"id": "r", "task": "asr", "text": "hi"}, lambda key: codes)
    [block] = pack_documents([rendered.document("r", "asr")], 64, renderer.vocab.pad_audio_id)
    batch = collate_blocks([block])
    loss, _ = token_loss_sum(model, batch, torch.float32, attention="mask")
    return rendered, batch, loss


def test_summed_with_one_codebook_is_the_discrete_input():
    """K = 1: softmax(w) = [1], so the placeholders get exactly the discrete tokens' rows."""
    vocab = MultimodalVocab(40, [("mfcc-kmeans", 1, 8)])
    codes = np.array([[3, 0, 7, 7, 1]])
    model = summed_lm(vocab, 1)
    discrete = TemplateRenderer(vocab, Chars(), "mfcc-kmeans")
    summed = TemplateRenderer(vocab, Chars(), "mfcc-kmeans", audio_input="summed")
    tokens, _, loss_discrete = asr_row_loss(discrete, model.lm, codes)
    placeholders, batch, loss_summed = asr_row_loss(summed, model, codes)
    # the same positions; summed rows are the discrete span's ids, kept int64 through packing
    audio = [vocab.audio_id("mfcc-kmeans", 0, c) for c in codes[0]]
    assert placeholders.prompt.count(vocab.audio_embed_id) == 5 and tokens.features is None
    assert len(placeholders.prompt) == len(tokens.prompt)
    assert placeholders.features.tolist() == [[i] for i in audio]
    assert batch["audio_features"].dtype == torch.int64
    assert loss_summed.item() == pytest.approx(loss_discrete.item(), rel=1e-6)
    ids = torch.tensor([tokens.input_ids])
    features = torch.from_numpy(placeholders.features)
    torch.testing.assert_close(
        model(torch.tensor([placeholders.input_ids]), audio_features=features).logits,
        model.lm(ids).logits,
        rtol=0,
        atol=0,
    )


def test_summed_rows_are_the_frames_codebook_ids():
    vocab = MultimodalVocab(40, [("mel-rvq", 4, 8)])
    codes = np.array([[1, 2, 3], [0, 0, 5], [7, 6, 5], [4, 4, 4]])  # K=4, F=3
    renderer = TemplateRenderer(vocab, Chars(), "mel-rvq", audio_input="summed")
    rendered = renderer.render({"id": "r", "task": "se"}, lambda key: codes)
    # one placeholder per input frame (not K); the clean answer stays K flattened tokens
    assert rendered.prompt.count(vocab.audio_embed_id) == 3
    assert len(rendered.target) == 1 + 4 * 3 + 1 + 1  # start, 12 ids, end, eos
    expected = [[vocab.audio_id("mel-rvq", k, codes[k, f]) for k in range(4)] for f in range(3)]
    assert rendered.features.dtype == np.int64 and rendered.features.tolist() == expected
    with pytest.raises(ValueError, match="summed input does not have"):
        renderer.lm_document("interleaved", {"id": "r", "words": []}, lambda key: codes)


def test_codebook_sum_is_the_softmax_weighted_sum_by_hand():
    vocab = MultimodalVocab(40, [("mel-rvq", 4, 8)])
    model = summed_lm(vocab, 4)
    table = model.get_input_embeddings().weight.detach()
    codes = torch.tensor([[1, 1, 1, 1], [0, 6, 2, 7]]).T  # [K=4, F=2]
    ids = vocab.audio_ids("mel-rvq", codes).T  # [n=2, K=4]: frame f's ids, codebook 0 first
    # initialised to zeros: the plain mean of the K rows
    torch.testing.assert_close(model.projector(ids), table[ids].mean(1))
    with torch.no_grad():
        model.projector.weights.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    e = [np.exp(w) for w in (0.5, -1.0, 2.0, 0.0)]
    share = [w / sum(e) for w in e]
    by_hand = sum(share[k] * table[ids[:, k]] for k in range(4))
    torch.testing.assert_close(model.projector(ids), by_hand)
    assert codebook_weights_of(model.projector) == pytest.approx(share)


def test_summed_gradients_reach_the_weights_and_the_embedding_rows():
    vocab = MultimodalVocab(40, [("mel-rvq", 2, 8)])
    model = summed_lm(vocab, 2)
    # the embedding stays the LLM's: one more parameter (w), nothing duplicated
    assert len(list(model.parameters())) == len(list(model.lm.parameters())) + 1
    assert list(model.projector.state_dict()) == ["weights"]
    slot = vocab.audio_embed_id
    ids = torch.tensor([[1, vocab.audio_start_id, slot, slot, vocab.audio_end_id, 2]])
    rows = vocab.audio_ids("mel-rvq", torch.tensor([[1, 3], [2, 7]])).T  # [F=2, K=2]
    model(ids, audio_features=rows).logits.sum().backward()
    assert model.projector.weights.grad.abs().min() > 0
    grad = model.get_input_embeddings().weight.grad
    used = rows.reshape(-1).tolist()
    assert all(grad[i].abs().sum() > 0 for i in used)
    unused = [i for i in range(vocab.audio_start, vocab.size) if i not in used]
    assert len(unused) == 16 - 4 and grad[unused].abs().sum() == 0


def test_codebook_sum_save_load_round_trip(tmp_path):
    vocab = MultimodalVocab(40, [("mel-rvq", 4, 8)])
    model = summed_lm(vocab, 4)
    with torch.no_grad():
        model.projector.weights.copy_(torch.tensor([1.0, 0.0, -1.0, 0.5]))
    save_projector(model.projector, tmp_path)
    assert json.loads((tmp_path / PROJECTOR_CONFIG).read_text()) == {
        "kind": "codebook-sum",
        "num_codebooks": 4,
    }
    other = tiny_llama(vocab.size, seed=1).get_input_embeddings()
    loaded = load_projector(tmp_path, other)
    assert isinstance(loaded, CodebookSum) and loaded.embedding is other
    torch.testing.assert_close(loaded.weights, model.projector.weights)
    assert list(codebook_weights(tmp_path).values()) == pytest.approx(
        codebook_weights_of(model.projector)
    )
    with pytest.raises(ValueError, match="needs the LLM's input embeddings"):
        load_projector(tmp_path)


@pytest.mark.parametrize("kwargs", [{"input_norm": "corpus"}, {"layers": [1, 3], "layer_dim": 2}])
def test_projector_runs_in_bf16_as_deepspeed_casts_it(kwargs):
    """DeepSpeed bf16 casts the module and applies no autocast: fp32 frames into a bf16
    projector must work (it died with "mat1 and mat2 must have the same dtype") and keep its
    feature statistics in float32."""
    torch.manual_seed(0)
    projector = AudioProjector(4, 16, 8, **kwargs)
    if "input_norm" in kwargs:
        projector.set_feature_statistics(torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.full((4,), 3.0))
    frames = torch.randn(5, 4) * 3
    reference = projector(frames)
    projector.to(torch.bfloat16)
    out = projector(frames)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)
    if "input_norm" in kwargs:
        assert projector.feature_mean.dtype == projector.feature_std.dtype == torch.float32
