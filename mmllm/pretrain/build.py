"""Building the model a pretraining run trains: the base LM resized for the vocabulary,
optional LoRA, the continuous or summed audio input, and its optimizer groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmllm.data.patterns import MULTI_STREAM
from mmllm.data.vocab import MultimodalVocab
from mmllm.modeling.attention import PACKED_ATTENTION
from mmllm.modeling.model import resize_model
from mmllm.pretrain.config import (
    ContinuousSection,
    DepthSection,
    LoraSection,
    ModelSection,
    OptimSection,
)
from mmllm.training.optim import make_adamw


def build_model(
    section: ModelSection,
    vocab: MultimodalVocab,
    max_positions: int,
    seed: int,
    centroids: dict | None = None,
    packed_attention: bool = True,
) -> Any:
    """A causal LM with `vocab.size` rows: a Llama from scratch (`section.base` unset) or
    `section.base` loaded and resized, new rows initialised as `section.init` says;
    attention per document (`mmllm.modeling.attention`) unless `packed_attention` is False."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if section.base is None:
        config = LlamaConfig(
            vocab_size=vocab.text_size,
            hidden_size=section.hidden_size,
            intermediate_size=section.intermediate_size,
            num_hidden_layers=section.num_layers,
            num_attention_heads=section.num_heads,
            num_key_value_heads=section.num_heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            section.base, trust_remote_code=section.trust_remote_code
        )
    if model.get_input_embeddings().weight.shape[0] != vocab.size:
        resize_model(
            model,
            vocab,
            init=section.init,
            centroids=centroids,
            freeze_new=False,
            seed=seed,
            audio_input_rms=section.resolved_audio_input_rms(),
        )
    if section.freeze_audio and section.lora is None:
        from mmllm.modeling.model import freeze_audio_rows

        freeze_audio_rows(model, vocab)
    if packed_attention:
        model.set_attn_implementation(PACKED_ATTENTION)
    if section.gradient_checkpointing:
        # transformers renamed it (the old name warns and goes in v6); older 5.x lack the new
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
        model.config.use_cache = False
    return model


def wrap_audio_input(
    model: Any,
    vocab: MultimodalVocab,
    audio_input: str,
    num_codebooks: int,
    continuous: ContinuousSection,
    feature_layers: Sequence[int] = (),
    feature_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    pattern: str = "flatten",
    output_tokenizer: str | None = None,
    depth: DepthSection | None = None,
) -> Any:
    """`model` as is for discrete input; else <|audio_embed|> positions take projected
    features (continuous: `num_codebooks` = the feature dimension D; with `feature_layers`,
    D holds one block per SSL layer and the projector learns their weighted sum) or the
    softmax-weighted sum of the frame's `num_codebooks` code embeddings (summed).
    `feature_stats` (mean, sd [stack * D] of the training rows) are what the projector
    standardises with under `continuous.input_norm: corpus`; `continuous.output_rms` scales
    its last layer at initialisation. See mmllm.modeling.continuous.

    `pattern` delay or depth: a MultiCodebookLM over `output_tokenizer`'s codebooks, whose
    codebook sum also reads summed input (mmllm.modeling.multicodebook; `depth` sizes the
    depth transformer)."""
    from mmllm.modeling.continuous import AudioProjector, CodebookSum, ContinuousInputLM

    if pattern in MULTI_STREAM:
        from mmllm.modeling.multicodebook import multicodebook_lm

        depth = depth or DepthSection()
        sizes = {k: getattr(depth, k) for k in ("hidden_size", "num_layers", "num_heads")}
        return multicodebook_lm(
            model, vocab, output_tokenizer, pattern, sizes, depth.frame_fraction
        )
    if audio_input == "discrete":
        return model
    embedding = model.get_input_embeddings()
    if audio_input == "summed":
        projector = CodebookSum(num_codebooks, embedding)
    else:
        width = embedding.weight.shape[1]
        stacked = num_codebooks * continuous.stack
        layers = list(feature_layers) or None
        layer_dim = num_codebooks // len(layers) if layers else None
        projector = AudioProjector(
            stacked,
            width,
            continuous.projector_hidden,
            layers=layers,
            layer_dim=layer_dim,
            input_norm=continuous.input_norm,
        )
        if continuous.input_norm == "corpus":
            if feature_stats is None:
                raise ValueError("continuous.input_norm corpus needs the training rows' statistics")
            projector.set_feature_statistics(*feature_stats)
        if continuous.output_rms is not None:
            projector.match_output_scale(continuous.output_rms)
    return ContinuousInputLM(model, projector, vocab.audio_embed_id)


def _module_name(model: Any, module: Any) -> str:
    return next(name for name, m in model.named_modules() if m is module).rsplit(".", 1)[-1]


def apply_lora(model: Any, lora: LoraSection, vocab: MultimodalVocab, freeze_audio: bool) -> Any:
    """peft LoRA on `lora.target_modules`; the new rows of the input embeddings and (untied)
    output layer are trained in full through peft's trainable_token_indices. Frozen audio
    rows (`freeze_audio`) leave only the special rows trainable."""
    from peft import LoraConfig, get_peft_model

    stop = vocab.audio_start if freeze_audio else vocab.size
    rows = list(range(vocab.text_size, stop))
    tokens = {_module_name(model, model.get_input_embeddings()): rows}
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        tokens[_module_name(model, output)] = rows
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        trainable_token_indices=tokens,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def merged_lora_copy(peft_model: Any, state_dict: dict[str, torch.Tensor]) -> Any:
    """The LoRA model with its adapters and trainable rows folded in, built on the CPU from
    `state_dict` (the gathered weights of `peft_model`, which under ZeRO-3 holds only shards:
    merging in place would read empty tensors). Call it where the model is built whole
    (`mmllm.pretrain.distributed.whole_model_loading`)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    config = peft_model.get_base_model().config
    dtype = next(iter(state_dict.values())).dtype
    copy = get_peft_model(
        AutoModelForCausalLM.from_config(config, torch_dtype=dtype),
        peft_model.peft_config["default"],
    )
    copy.load_state_dict(state_dict, strict=True)
    return copy.merge_and_unload()


def mixing_weights(model: Any) -> list[torch.nn.Parameter]:
    """The input's softmax mixing logits: CodebookSum.weights [K] and
    AudioProjector.layer_weights [L] (empty for a plain LM or a projector without layers)."""
    from mmllm.modeling.continuous import AudioProjector, CodebookSum

    found = []
    for module in model.modules():
        if isinstance(module, CodebookSum):
            found.append(module.weights)
        elif (
            isinstance(module, AudioProjector)
            and getattr(module, "layer_weights", None) is not None
        ):
            found.append(module.layer_weights)
    return found


def make_optimizer(model: Any, optim: OptimSection) -> torch.optim.Optimizer:
    """The trainer's AdamW (`mmllm.training.optim.make_adamw`): no weight decay on the
    embeddings and the output layer, and the input's mixing weights in their own group at
    `mixing_lr_scale * lr`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    no_decay = [base.get_input_embeddings().weight]
    if base.get_output_embeddings() is not None:
        no_decay.append(base.get_output_embeddings().weight)
    # LoRA: the new rows peft trains in full (trainable_token_indices) are embedding rows too
    no_decay += [p for name, p in model.named_parameters() if "trainable_tokens_delta" in name]
    return make_adamw(
        model.parameters(),
        lr=optim.lr,
        betas=(optim.beta1, optim.beta2),
        weight_decay=optim.weight_decay,
        no_decay=no_decay,
        scaled=mixing_weights(model),
        scaled_lr=optim.lr * optim.mixing_lr_scale,
    )
