"""Configs: every shipped YAML loads, and bad keys, types and missing values name themselves."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from mmllm.config import ConfigError, config_dataclass, config_hash, load_config, save_config
from mmllm.corpora.convert import CorpusConfig
from mmllm.pretrain.config import PretrainConfig
from mmllm.synth.build import SynthConfig
from mmllm.tokenizers.base import TokenizerConfig
from mmllm.tokenizers.vocoder import VocoderConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Which dataclass each configs/ subfolder holds; a new folder must be added here.
CONFIG_CLASSES = {
    "synth": SynthConfig,
    "corpora": CorpusConfig,
    "tokenizers": TokenizerConfig,
    "pretrain": PretrainConfig,
    "recipes": PretrainConfig,
    "vocoder": VocoderConfig,
}


@config_dataclass
class Optimizer:
    lr: float = 1e-3
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])


@config_dataclass
class Run:
    name: str
    steps: int = 10
    optimizer: Optimizer = dataclasses.field(default_factory=Optimizer)


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS))
)
def test_every_shipped_yaml_loads(path):
    folder = path.relative_to(CONFIGS).parts[0]
    if folder == "accelerate":  # accelerate's own launcher configs, pointing at ours
        from accelerate.commands.config.config_args import load_config_from_file

        launcher = load_config_from_file(str(path))
        ds_file = CONFIGS.parent / launcher.deepspeed_config["deepspeed_config_file"]
        stage = json.loads(ds_file.read_text())["zero_optimization"]["stage"]
        assert path.stem.endswith(f"zero{stage}"), f"{path} points at {ds_file} (ZeRO-{stage})"
        if "x8" in path.stem:  # nodes x 8 GPUs
            nodes = int(path.stem[0])
            assert (launcher.num_machines, launcher.num_processes) == (nodes, 8 * nodes)
        return
    assert folder in CONFIG_CLASSES, f"{path}: no config class registered for configs/{folder}/"
    cfg = load_config(CONFIG_CLASSES[folder], path)
    assert dataclasses.is_dataclass(cfg)


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_and_dotted_overrides(tmp_path):
    path = write(tmp_path, "name: a\noptimizer:\n  lr: 1.0e-4\n")
    cfg = load_config(Run, path, ["steps=7", "optimizer.betas=[0.8, 0.9]", "optimizer.lr=3e-4"])
    assert cfg == Run(name="a", steps=7, optimizer=Optimizer(lr=3e-4, betas=[0.8, 0.9]))


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "name: a\noptimizer:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{path}: key 'optimizer.lrr': unknown key"):
        load_config(Run, path)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "name: a\nsteps: many\n")
    with pytest.raises(
        ConfigError, match=rf"{path}: key 'steps': Input should be a valid integer.*'many'"
    ):
        load_config(Run, path)


def test_missing_required_value_names_key_and_file(tmp_path):
    path = write(tmp_path, "steps: 3\n")
    with pytest.raises(ConfigError, match=rf"{path}: key 'name': missing required value"):
        load_config(Run, path)


def test_bad_override_names_the_override(tmp_path):
    path = write(tmp_path, "name: a\n")
    with pytest.raises(
        ConfigError, match=r"command-line override 'optimizer.lr=fast': key 'optimizer.lr'"
    ):
        load_config(Run, path, ["optimizer.lr=fast"])
    with pytest.raises(ConfigError, match=r"override 'steps': expected key=value"):
        load_config(Run, path, ["steps"])


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_config(Run, tmp_path / "nope.yaml")
    path = write(tmp_path, "name: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}: invalid YAML"):
        load_config(Run, path)
    path = write(tmp_path, "- a list\n")
    with pytest.raises(ConfigError, match=rf"{path}: top level must be a mapping"):
        load_config(Run, path)


def test_saved_config_reloads_identically(tmp_path):
    cfg = Run(name="x", steps=3)
    saved = save_config(cfg, tmp_path / "artifact")
    assert saved.name == "config.yaml"
    assert load_config(Run, saved) == cfg
    assert config_hash(load_config(Run, saved)) == config_hash(cfg) != config_hash(Run(name="y"))
    assert yaml.safe_load(saved.read_text())["optimizer"]["lr"] == 1e-3


def test_synth_config_presets_and_validation():
    small = SynthConfig.from_name("small")
    assert small.counts["asr"].train == 6000
    custom = load_config(SynthConfig, CONFIGS / "synth" / "asr-only.yaml")
    assert list(custom.counts) == ["asr"] and custom.counts["asr"].train == 12000
    with pytest.raises(ConfigError, match=r"key 'size'|unknown task"):
        load_config(SynthConfig, None, ["tasks=[asr, dance]"])
    with pytest.raises(ConfigError, match=r"'huge' is not one of"):
        load_config(SynthConfig, None, ["size=huge"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("deepspeed/*.json")), ids=lambda p: p.name)
def test_every_deepspeed_config_fills_from_the_pretrain_config(path):
    from mmllm.pretrain.distributed import deepspeed_config

    train = PretrainConfig().train
    ds = deepspeed_config(path, train, grad_clip=1.0, bf16=False)
    assert "auto" not in json.dumps(ds), ds
    assert ds["train_micro_batch_size_per_gpu"] == train.micro_batch_size


@config_dataclass
class Job:
    name: str = "job"
    optimizer: Optimizer = dataclasses.field(default_factory=Optimizer)
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"a": 1.0})


def test_a_section_override_merges_key_by_key(tmp_path):
    path = write(
        tmp_path, "optimizer:\n  lr: 0.5\n  betas: [0.1, 0.2]\nweights: {a: 2.0, b: 3.0}\n"
    )
    cfg = load_config(Job, path, ["optimizer={lr: 0.25}", "weights={c: 1.0}"])
    assert cfg.optimizer == Optimizer(lr=0.25, betas=[0.1, 0.2])  # betas kept from the file
    assert cfg.weights == {"c": 1.0}  # a plain dict field is replaced, as written


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer={lr: 1", "command-line override 'optimizer={lr: 1': invalid YAML value"),
        ("optimizer..lr=1", "command-line override 'optimizer..lr=1': expected key=value"),
    ],
)
def test_malformed_override_is_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(Job, None, [override])
    assert str(err.value).startswith(message)
