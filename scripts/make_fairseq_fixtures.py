#!/usr/bin/env python3
"""Build the fairseq-checkpoint fixtures under tests/fixtures/fairseq/ (run by hand, never by
tests or CI), in the pinned environment of make_fixtures.py plus omegaconf 2.0.6 (the version
fairseq 0.12 pins):

    ~/fixenv/bin/pip install omegaconf==2.0.6
    ~/fixenv/bin/python scripts/make_fairseq_fixtures.py

fairseq itself does not install on current Python, so the checkpoints are written here in the
form fairseq's `checkpoint_utils` / `Trainer.state_dict` writes them (`args`, `cfg`, `model`,
`criterion`, `optimizer_history`, `task_state`, `extra_state`, `last_optimizer_state`), from
the weights of the committed tiny Hugging Face fixtures renamed to fairseq's module names:

- `wav2vec2-base-args.pt`: pre-training, base layout, configuration as an argparse `Namespace`
  in `args` (as `wav2vec_small.pt`), in torch's legacy (pre-1.6, non-zip) format;
- `xlsr-omegaconf.pt`: pre-training, large/XLS-R layout, configuration as a pickled omegaconf
  `DictConfig` of fairseq's structured dataclasses (as `xlsr2_300m.pt`);
- `wav2vec2-ctc.pt`: fine-tuned `w2v_encoder` with its CTC projection, `cfg` as plain data whose
  `model.w2v_args` is the pre-training `Namespace`, and `dict.ltr.txt`;
- `data2vec-audio.pt`: data2vec-audio pre-training (stacked positional convs, `final_proj.0`
  and the EMA teacher under `_ema`, as `audio_base_ls.pt`);
- `malicious.pt`: a fairseq-shaped checkpoint whose `cfg` asks to call `os.system`.

Each checkpoint is then converted by transformers' own conversion script (its
`recursively_load_weights`, fed the checkpoint's `model` state dict as fairseq's model would
give it; the `import fairseq` at its top is satisfied by a stub, nothing of fairseq is used) into
the model class and config a user would pass to it (`--config_path` = the source fixture's
config.json), and `NAME.reference.safetensors` holds what that produced: every tensor
(`weight.KEY`), an input (`input_values`) and every hidden state transformers computes from it
(`hidden_states.I`).
"""

import argparse
import dataclasses
import importlib
import os
import shutil
import sys
import types
from collections import OrderedDict
from typing import Any, List, Optional

import numpy as np
import torch
import transformers
from omegaconf import OmegaConf
from safetensors.numpy import save_file as save_np

assert torch.__version__.startswith("2.5.1"), torch.__version__
assert transformers.__version__ == "4.46.3", transformers.__version__
import omegaconf  # noqa: E402

assert omegaconf.__version__ == "2.0.6", omegaconf.__version__

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import ROOT, audio, np32  # noqa: E402

OUT = os.path.join(ROOT, "fairseq")

# transformers' conversion scripts import fairseq at the top; they only need its name.
for mod in ("fairseq", "fairseq.data"):
    sys.modules[mod] = types.ModuleType(mod)
sys.modules["fairseq.data"].Dictionary = object
sys.modules["fairseq"].data = sys.modules["fairseq.data"]
sys.modules["datasets"] = types.ModuleType("datasets")
sys.modules["datasets"].load_dataset = None
# ... and the data2vec one a copy of fairseq's data2vec model module, also unused by its mapping.
sys.modules["transformers.models.data2vec.data2vec_audio"] = types.ModuleType("data2vec_audio")
sys.modules["transformers.models.data2vec.data2vec_audio"].Data2VecAudioModel = None
convert_w2v = importlib.import_module(
    "transformers.models.wav2vec2.convert_wav2vec2_original_pytorch_checkpoint_to_pytorch"
)
convert_d2v = importlib.import_module(
    "transformers.models.data2vec.convert_data2vec_audio_original_pytorch_checkpoint_to_pytorch"
)
transformers.logging.set_verbosity_error()  # the scripts turn on a line per tensor


# fairseq's structured configuration classes, under fairseq's module names so that the pickled
# DictConfig names them as a real checkpoint does (they are only referenced, never called).
def fairseq_module(name):
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    return sys.modules[name]


@dataclasses.dataclass
class Wav2Vec2Config:
    _name: str = "wav2vec2"
    extractor_mode: str = "default"
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_type: str = "transformer"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    dropout_features: float = 0.0
    final_dim: int = 0
    layer_norm_first: bool = False
    conv_feature_layers: str = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
    conv_bias: bool = False
    logit_temp: float = 0.1
    quantize_targets: bool = False
    quantize_input: bool = False
    same_quantizer: bool = False
    target_glu: bool = False
    feature_grad_mult: float = 1.0
    quantizer_depth: int = 1
    quantizer_factor: int = 3
    latent_vars: int = 320
    latent_groups: int = 2
    latent_dim: int = 0
    mask_length: int = 10
    mask_prob: float = 0.65
    mask_selection: str = "static"
    mask_channel_length: int = 10
    mask_channel_prob: float = 0.0
    num_negatives: int = 100
    codebook_negatives: int = 0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    pos_conv_depth: int = 1
    latent_temp: List[float] = dataclasses.field(default_factory=lambda: [2.0, 0.5, 0.999995])


@dataclasses.dataclass
class AudioPretrainingConfig:
    _name: str = "audio_pretraining"
    data: str = "/data/manifests"
    sample_rate: int = 16000
    normalize: bool = False
    max_sample_size: Optional[int] = 250000
    labels: Optional[str] = None


@dataclasses.dataclass
class Wav2VecCriterionConfig:
    _name: str = "wav2vec"
    infonce: bool = True
    loss_weights: List[float] = dataclasses.field(default_factory=lambda: [0.1, 10.0])
    log_keys: List[str] = dataclasses.field(default_factory=lambda: ["prob_perplexity", "code_perplexity", "temp"])


@dataclasses.dataclass
class CommonConfig:
    fp16: bool = True
    log_interval: int = 200
    seed: int = 1


@dataclasses.dataclass
class FairseqConfig:
    _name: Optional[str] = None
    common: CommonConfig = dataclasses.field(default_factory=CommonConfig)
    model: Any = None
    task: Any = None
    criterion: Any = None


for cls, mod in (
    (Wav2Vec2Config, "fairseq.models.wav2vec.wav2vec2"),
    (AudioPretrainingConfig, "fairseq.tasks.audio_pretraining"),
    (Wav2VecCriterionConfig, "fairseq.criterions.wav2vec_criterion"),
    (CommonConfig, "fairseq.dataclass.configs"),
    (FairseqConfig, "fairseq.dataclass.configs"),
):
    cls.__module__ = mod
    setattr(fairseq_module(mod), cls.__name__, cls)


def conv_layers_string(cfg):
    return " + ".join(f"[({d}, {k}, {s})]" for d, k, s in zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride))


def arch_of(cfg, data2vec=False):
    """The fairseq model configuration of a transformers config (the inverse of the translation
    speechtune's import does, written independently here)."""
    arch = dict(
        _name="data2vec_audio" if data2vec else "wav2vec2",
        extractor_mode="layer_norm" if data2vec or cfg.feat_extract_norm == "layer" else "default",
        encoder_layers=cfg.num_hidden_layers,
        encoder_embed_dim=cfg.hidden_size,
        encoder_ffn_embed_dim=cfg.intermediate_size,
        encoder_attention_heads=cfg.num_attention_heads,
        activation_fn=cfg.hidden_act,
        layer_norm_first=False if data2vec else cfg.do_stable_layer_norm,
        conv_feature_layers=conv_layers_string(cfg),
        conv_bias=cfg.conv_bias,
        dropout=0.1,
        attention_dropout=0.1,
        encoder_layerdrop=0.05,
        mask_prob=0.65,
        mask_length=10,
    )
    if data2vec:
        arch.update(conv_pos=cfg.conv_pos_kernel_size * cfg.num_conv_pos_embeddings + 1, pos_conv_depth=cfg.num_conv_pos_embeddings)
    else:
        arch.update(conv_pos=cfg.num_conv_pos_embeddings)
    arch["conv_pos_groups"] = cfg.num_conv_pos_embedding_groups
    if getattr(cfg, "num_codevectors_per_group", None) and not data2vec:
        arch.update(
            quantize_targets=True,
            latent_vars=cfg.num_codevectors_per_group,
            latent_groups=cfg.num_codevector_groups,
            latent_dim=cfg.codevector_dim,
            final_dim=cfg.proj_codevector_dim,
            num_negatives=cfg.num_negatives,
            logit_temp=cfg.contrastive_logits_temperature,
        )
    return arch


def fairseq_names(sd, cfg, data2vec=False, prefix=""):
    """transformers' state dict → fairseq's module names (what fairseq's model.state_dict() has)."""
    layer_norm_cnn = data2vec or cfg.feat_extract_norm == "layer"
    out = OrderedDict()
    for k, v in sd.items():
        k = k.removeprefix("wav2vec2.").removeprefix("data2vec_audio.")
        n = k
        n = n.replace("feature_projection.projection", "post_extract_proj")
        n = n.replace("feature_projection.layer_norm", "layer_norm")
        if ".conv_layers." in n:
            i = int(n.split(".")[2])
            if ".conv." in n:
                n = n.replace(f"conv_layers.{i}.conv.", f"conv_layers.{i}.0.")
            elif layer_norm_cnn:
                n = n.replace(f"conv_layers.{i}.layer_norm.", f"conv_layers.{i}.2.1.")
            else:
                n = n.replace(f"conv_layers.{i}.layer_norm.", f"conv_layers.{i}.2.")
        n = n.replace("pos_conv_embed.conv.parametrizations.weight.original0", "pos_conv.0.weight_g")
        n = n.replace("pos_conv_embed.conv.parametrizations.weight.original1", "pos_conv.0.weight_v")
        n = n.replace("pos_conv_embed.conv.", "pos_conv.0.")
        if "pos_conv_embed.layers." in n:
            j = int(n.split(".")[3])
            n = n.replace(f"pos_conv_embed.layers.{j}.conv.", f"pos_conv.{j}.0.")
        n = n.replace(".attention.", ".self_attn.")
        if ".layers." in n and ".layer_norm." in n:
            n = n.replace(".layer_norm.", ".self_attn_layer_norm.")
        n = n.replace("feed_forward.intermediate_dense", "fc1").replace("feed_forward.output_dense", "fc2")
        n = n.replace("masked_spec_embed", "mask_emb")
        n = n.replace("quantizer.codevectors", "quantizer.vars")
        n = n.replace("project_hid", "final_proj")
        if n.startswith("lm_head."):
            out["w2v_encoder.proj." + n.split(".", 1)[1]] = v.clone()
        else:
            out[prefix + n] = v.clone()
    return out


def fairseq_checkpoint(model_sd, cfg=None, args=None):
    """A dict laid out as fairseq's Trainer.state_dict writes it, with Adam state for realism."""
    first = next(iter(model_sd.values()))
    return {
        "args": args,
        "cfg": cfg,
        "model": model_sd,
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "Wav2vecCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": 2.61},
                "num_updates": 400000,
            }
        ],
        "task_state": {},
        "extra_state": {"metrics": {}, "previous_training_time": 123456.7, "train_iterator": {"epoch": 57}},
        "last_optimizer_state": {"state": {0: {"step": 400000, "exp_avg": torch.zeros_like(first)}}},
    }


def hf_model(src):
    cls = getattr(transformers, transformers.AutoConfig.from_pretrained(src).architectures[0])
    return cls.from_pretrained(src).eval()


def convert_with_transformers(ckpt_path, src, data2vec=False, finetuned=False):
    """transformers' conversion: a fresh model of the source fixture's config, loaded by the
    script's recursively_load_weights from the checkpoint's model state dict."""
    config = transformers.AutoConfig.from_pretrained(src)
    cls = getattr(transformers, config.architectures[0])
    torch.manual_seed(123)
    model = cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))  # anything the conversion misses shows up
    state = torch.load(ckpt_path, weights_only=False)
    sd = state["model"]

    class Fairseq:
        def state_dict(self):
            return sd

    if data2vec:
        if "final_proj.0.weight" in sd:  # what the script does before loading
            sd["final_proj.weight"] = sd.pop("final_proj.0.weight")
            sd["final_proj.bias"] = sd.pop("final_proj.0.bias")
        sd.pop("_ema", None)
        convert_d2v.recursively_load_weights(Fairseq(), model, not finetuned)
    else:
        convert_w2v.recursively_load_weights(Fairseq(), model, not finetuned)
    return model.eval()


def reference(name, model, src):
    sd = model.state_dict()
    ref_model = hf_model(src)
    for k, v in ref_model.state_dict().items():
        assert torch.equal(sd[k], v), f"{name}: {k} differs from the source fixture"
    ref = {f"weight.{k}": np32(v) for k, v in sd.items()}
    x = torch.tensor(audio(1600, 11).astype(np.float32) / 32768.0)[None]
    x = (x - x.mean()) / torch.sqrt(x.var() + 1e-7)
    base = getattr(model, "wav2vec2", None) or getattr(model, "data2vec_audio", None) or model
    with torch.no_grad():
        hs = base(x, output_hidden_states=True).hidden_states
    ref["input_values"] = np32(x[0])
    for i, h in enumerate(hs):
        ref[f"hidden_states.{i}"] = np32(h[0])
    save_np(ref, os.path.join(OUT, f"{name}.reference.safetensors"))


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)

    # 1. Pre-training, base layout, `args` Namespace, legacy torch format.
    src = os.path.join(ROOT, "pretrain-base")
    m = hf_model(src)
    arch = arch_of(m.config)
    args = argparse.Namespace(
        arch="wav2vec2",
        task="audio_pretraining",
        criterion="wav2vec",
        data="/data/librispeech",
        normalize=False,
        sample_rate=16000,
        max_sample_size=250000,
        min_sample_size=32000,
        lr=[0.0005],
        optimizer="adam",
        adam_betas="(0.9,0.98)",
        loss_weights=[0.1, 10],
        infonce=True,
        fp16=True,
        **{k: v for k, v in arch.items() if k != "_name"},
    )
    sd = fairseq_names(m.state_dict(), m.config)
    path = os.path.join(OUT, "wav2vec2-base-args.pt")
    torch.save(fairseq_checkpoint(sd, args=args), path, _use_new_zipfile_serialization=False)
    reference("wav2vec2-base-args", convert_with_transformers(path, src), src)

    # 2. Pre-training, large/XLS-R layout, `cfg` a pickled DictConfig.
    src = os.path.join(ROOT, "pretrain-xlsr")
    m = hf_model(src)
    cfg = OmegaConf.structured(
        FairseqConfig(
            model=OmegaConf.structured(Wav2Vec2Config(**arch_of(m.config))),
            task=OmegaConf.structured(AudioPretrainingConfig(normalize=True)),
            criterion=OmegaConf.structured(Wav2VecCriterionConfig()),
        )
    )
    sd = fairseq_names(m.state_dict(), m.config)
    path = os.path.join(OUT, "xlsr-omegaconf.pt")
    torch.save(fairseq_checkpoint(sd, cfg=cfg), path)
    reference("xlsr-omegaconf", convert_with_transformers(path, src), src)

    # 3. Fine-tuned CTC: cfg plain data (OmegaConf.to_container), w2v_args a Namespace.
    src = os.path.join(ROOT, "wav2vec2-xlsr")
    m = hf_model(src)
    pre = arch_of(m.config)
    w2v_args = argparse.Namespace(**{k: v for k, v in pre.items() if k != "_name"}, arch="wav2vec2", normalize=True)
    cfg = {
        "_name": None,
        "common": {"fp16": True, "seed": 1},
        "task": {"_name": "audio_finetuning", "normalize": True, "labels": "ltr", "data": "/data/ls960"},
        "criterion": {"_name": "ctc", "zero_infinity": True},
        "model": {
            "_name": "wav2vec_ctc",
            "w2v_path": "/checkpoints/xlsr.pt",
            "no_pretrained_weights": False,
            "dropout_input": 0.0,
            "final_dropout": 0.0,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "activation_dropout": 0.1,
            "apply_mask": True,
            "mask_length": 10,
            "mask_prob": 0.5,
            "mask_channel_length": 64,
            "mask_channel_prob": 0.25,
            "layerdrop": 0.1,
            "feature_grad_mult": 0.0,
            "freeze_finetune_updates": 10000,
            "normalize": True,
            "w2v_args": w2v_args,
        },
    }
    sd = fairseq_names(m.state_dict(), m.config, prefix="w2v_encoder.w2v_model.")
    path = os.path.join(OUT, "wav2vec2-ctc.pt")
    torch.save(fairseq_checkpoint(sd, cfg=cfg), path)
    reference("wav2vec2-ctc", convert_with_transformers(path, src, finetuned=True), src)
    # fairseq's target dictionary: one symbol per line with a count; <s> <pad> </s> <unk> implied.
    letters = ["|", "E", "T", "A", "O", "N", "I", "H"][: m.config.vocab_size - 4]
    with open(os.path.join(OUT, "dict.ltr.txt"), "w") as f:
        f.writelines(f"{c} {1000 - i}\n" for i, c in enumerate(letters))

    # 4. data2vec-audio pre-training: stacked positional convs, final_proj.0, the EMA teacher.
    src = os.path.join(ROOT, "data2vec-audio")
    m = hf_model(src)
    model_cfg = dict(arch_of(m.config, data2vec=True), average_top_k_layers=8, ema_decay=0.999)
    cfg = OmegaConf.create(
        {"model": model_cfg, "task": {"_name": "audio_pretraining", "normalize": True}, "common": {"fp16": True}}
    )
    sd = fairseq_names(m.state_dict(), m.config, data2vec=True)
    d = m.config.hidden_size
    g = torch.Generator().manual_seed(99)
    sd["final_proj.0.weight"] = torch.randn(d, d, generator=g)
    sd["final_proj.0.bias"] = torch.randn(d, generator=g)
    sd["_ema"] = OrderedDict((k, v.clone() * 0.5) for k, v in sd.items() if k.startswith("encoder.layers.0."))
    path = os.path.join(OUT, "data2vec-audio.pt")
    torch.save(fairseq_checkpoint(sd, cfg=cfg), path)
    reference("data2vec-audio", convert_with_transformers(path, src, data2vec=True), src)

    # 5. A checkpoint that would run a shell command when unpickled by Python.
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/speechtune-pwned",))

    torch.save(fairseq_checkpoint({"w": torch.zeros(2)}, cfg={"model": Payload()}), os.path.join(OUT, "malicious.pt"))

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    for f in sorted(os.listdir(OUT)):
        print(f"{f}: {os.path.getsize(os.path.join(OUT, f))} bytes")
    print(f"fairseq fixtures: {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    sys.exit(main())
