"""Diffusers-style JiT folders (layouts A, B0, B): reading, writing, parity with the goldens, bad files.

The layouts are written here from the names in the issue, independently of jit_diffusion.diffusers, so a
wrong mapping in the package cannot be mirrored by the test."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from jit_diffusion import JiT
from jit_diffusion.cli import main
from jit_diffusion.diffusion.generate import parse_classes
from jit_diffusion.diffusion.solvers import METHODS
from jit_diffusion.formats.diffusers_folder import save_diffusers
from jit_diffusion.formats.loading import load_model, open_source
from jit_diffusion.formats.official import official_model
from jit_diffusion.models.config import ModelInfo, preset_config
from jit_diffusion.models.pretrained import config_shapes, save_pretrained

WEIGHTS = "diffusion_pytorch_model.safetensors"


def b0_names(state: dict) -> dict:
    """Official names -> layout B0: adaLN_modulation.1 -> adaLN_modulation, final_layer.* -> *_final."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^(blocks\.\d+)\.adaLN_modulation\.1\.", r"\1.adaLN_modulation.", key)
        key = key.replace("final_layer.norm_final.", "norm_final.").replace("final_layer.linear.", "linear_final.")
        out[key.replace("final_layer.adaLN_modulation.1.", "adaLN_modulation_final.")] = value
    return out


def b_names(state: dict) -> dict:
    """Layout B: B0 with qkv split in q, k, v order and the attention's norms and output renamed."""
    out = {}
    for key, value in b0_names(state).items():
        if ".attn.qkv." in key:
            for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                out[key.replace(".qkv.", f".{name}.")] = part.clone()
        else:
            key = key.replace(".attn.q_norm.", ".attn.norm_q.").replace(".attn.k_norm.", ".attn.norm_k.")
            out[key.replace(".attn.proj.", ".attn.to_out.0.")] = value
    return out


def native_config(cfg: dict) -> dict:
    """transformer/config.json of layouts B0/B, architecture spelled out."""
    return {
        "_class_name": "JiTTransformer2DModel", "sample_size": cfg["input_size"], "patch_size": cfg["patch_size"],
        "in_channels": cfg.get("in_channels", 3), "hidden_size": cfg["hidden_size"], "num_layers": cfg["depth"],
        "num_attention_heads": cfg["num_heads"], "mlp_ratio": cfg.get("mlp_ratio", 4.0), "attention_dropout": 0.0,
        "dropout": 0.0, "num_classes": cfg["num_classes"], "bottleneck_dim": cfg["bottleneck_dim"],
        "in_context_len": cfg["in_context_len"], "in_context_start": cfg["in_context_start"], "norm_eps": 1e-6,
    }  # fmt: skip


def write_folder(folder: Path, tensors: dict, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def forward(model, golden) -> torch.Tensor:
    with torch.no_grad():
        return model(golden["forward.x"], golden["forward.t"], golden["forward.y"])


LAYOUTS = {"B0": b0_names, "B": b_names}


@pytest.mark.parametrize("layout", ["B0", "B"])
def test_b0_and_b_files_reproduce_the_golden_forward(golden, tmp_path, layout, capsys):
    state, config = LAYOUTS[layout](golden.net_state_dict()), native_config(golden.model_config)
    folder = write_folder(tmp_path / layout, state, config)
    out = tmp_path / "export"
    assert main(["convert", str(folder), str(out)]) == 0
    assert f"layout {layout}" in capsys.readouterr().out
    for source in (out, folder):
        model, info = load_model(source)
        assert (forward(model, golden) - golden["forward.out"]).abs().max().item() <= 1e-6
        assert info.model_config == {**golden.model_config, "attn_drop": 0.0, "proj_drop": 0.0}
    assert open_source(folder / WEIGHTS).diffusers.layout == layout  # the bare file beside its config.json


@pytest.mark.parametrize("fmt,layout", [("diffusers-b0", "B0"), ("diffusers-b", "B")])
def test_exports_have_the_community_names_and_convert_back_bit_identical(golden, tmp_path, fmt, layout):
    names = [f"c{i}" for i in range(10)]
    info = ModelInfo.create(golden.model_config, names, cfg=2.5, cfg_interval=(0.2, 0.9), t_eps=0.04, method="euler")
    ours = save_pretrained(golden.model(), tmp_path / "ours", info)
    assert load_model(ours)[1].method == "euler"  # our export keeps the solver too
    out = tmp_path / fmt
    assert main(["convert", str(ours), str(out), "--format", fmt]) == 0
    source = load_file(str(ours / "model.safetensors"))
    written = load_file(str(out / "transformer" / WEIGHTS))
    expected = LAYOUTS[layout](source)
    assert set(written) == set(expected) and all(torch.equal(written[k], v) for k, v in expected.items())
    config = json.loads((out / "transformer" / "config.json").read_text())
    assert {k: v for k, v in config.items() if not k.startswith("_")} == {
        k: v for k, v in native_config(golden.model_config).items() if not k.startswith("_")}  # fmt: skip
    index = json.loads((out / "model_index.json").read_text())
    assert index["transformer"][1] == "JiTTransformer2DModel" and index["id2label"]["3"] == "c3"
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["t_eps"], scheduler["solver"]) == (0.04, "euler")
    back = tmp_path / "back"
    assert main(["convert", str(out), str(back)]) == 0
    again = load_file(str(back / "model.safetensors"))
    assert set(again) == set(source) and all(torch.equal(again[k], v) for k, v in source.items())
    _, loaded = load_model(out)
    assert (loaded.class_names, loaded.cfg, loaded.cfg_interval, loaded.t_eps, loaded.method) == (
        names, 2.5, (0.2, 0.9), 0.04, "euler")  # fmt: skip


@pytest.mark.slow
def test_layout_a_and_b0_at_preset_size_map_every_key(tmp_path):
    """JiT-B/16-shaped seeded random weights (bf16, to keep memory down) as layout A and as B0."""
    shapes = config_shapes(JiT, preset_config("JiT-B/16"))
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen).to(torch.bfloat16) for k, shape in shapes.items()}
    layout_a = {"_class_name": "JiTTransformer2DModel", "model_type": "JiT-B/16", "sample_size": 256,
                "num_class_embeds": 1000, "attention_dropout": 0.0, "dropout": 0.0}  # fmt: skip
    b16 = {"input_size": 256, "patch_size": 16, "hidden_size": 768, "depth": 12, "num_heads": 12, "num_classes": 1000,
           "bottleneck_dim": 128, "in_context_len": 32, "in_context_start": 4}  # fmt: skip
    folders = {
        "A": write_folder(tmp_path / "a", {f"transformer.{k}": v for k, v in state.items()}, layout_a),
        "B0": write_folder(tmp_path / "b0", b0_names(state), native_config(b16)),
    }
    net = {"model_ema1": {f"net.{k}": v for k, v in state.items()}}
    opened = {"official": None, **{layout: open_source(folder) for layout, folder in folders.items()}}
    assert {layout: source.diffusers.layout for layout, source in opened.items() if source} == {"A": "A", "B0": "B0"}
    for name, source in opened.items():  # one model alive at a time
        model, info = official_model(net, tmp_path, "ema1", "cpu") if source is None else source.load()
        loaded = model.state_dict()
        assert model.num_params() == 131_320_320 and (info.image_size, info.num_classes) == (256, 1000), name
        assert set(loaded) == set(state) and all(torch.equal(loaded[k], v.float()) for k, v in state.items()), name
        assert info.model_config["in_context_start"] == 4 and loaded["pos_embed"].dtype == torch.float32
        del model, loaded


def test_layout_a_older_names_and_net_prefix(tmp_path):
    torch.manual_seed(0)
    model = JiT(**vars(preset_config("JiT-Ti/4", input_size=16, num_classes=5))).eval()
    old = {"model_name": "JiT-Ti/4", "image_size": 16, "num_classes": 5, "attn_dropout": 0.0, "proj_dropout": 0.1}
    folder = write_folder(tmp_path / "a", {f"net.{k}": v for k, v in model.state_dict().items()}, old)
    loaded, info = load_model(folder)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert info.model_config["proj_drop"] == 0.1 and info.model_config["in_context_start"] == 2  # from the preset


def test_sharded_safetensors_with_an_index(golden, tmp_path):
    tensors = b0_names(golden.net_state_dict())
    folder = tmp_path / "sharded"
    folder.mkdir()
    keys = sorted(tensors)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}  # fmt: skip
    for name, part in shards.items():
        save_file({k: tensors[k] for k in part}, str(folder / name))
    index = folder / f"{WEIGHTS}.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: n for n, part in shards.items() for k in part}}))
    (folder / "config.json").write_text(json.dumps(native_config(golden.model_config)))
    for source in (folder, index):
        model, _ = load_model(source)
        assert (forward(model, golden) - golden["forward.out"]).abs().max().item() <= 1e-6
    assert "2 shards" in open_source(folder).describe()
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lists shard diffusion_pytorch_model-00002-of-00002"):
        open_source(folder)


@pytest.mark.parametrize("dtype,name", [(torch.float16, "fp16"), (torch.bfloat16, "bf16")])
def test_half_precision_files_load_as_fp32(golden, tmp_path, dtype, name):
    state = golden.net_state_dict()
    folder = write_folder(tmp_path / "half", b0_names({k: v.to(dtype) for k, v in state.items()}),
                          native_config(golden.model_config))  # fmt: skip
    source = open_source(folder)
    assert f"({name}, read as fp32)" in source.describe()
    model, _ = source.load()
    loaded = model.state_dict()
    assert all(loaded[k].dtype == torch.float32 for k in state)
    assert all(torch.equal(loaded[k], v.to(dtype).float()) for k, v in state.items())
    bf16 = JiT.from_pretrained(folder, dtype="bf16")  # converted only when asked
    assert bf16.blocks[0].attn.qkv.weight.dtype == torch.bfloat16


class Marker:
    """Unpickling this would create a file: proof that something ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_weights_are_refused_and_never_run(golden, tmp_path):
    marker = tmp_path / "marker"
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(native_config(golden.model_config)))
    evil = {"blocks.0.norm1.weight": torch.zeros(64), "evil": Marker(str(marker))}
    torch.save(evil, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"holds pickled weights \(diffusion_pytorch_model.bin\)") as err:
        open_source(folder)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="refusing to load"):  # the .bin itself, given directly
        open_source(folder / "diffusion_pytorch_model.bin")
    (folder / "diffusion_pytorch_model.bin").rename(folder / WEIGHTS)  # a pickle pretending to be safetensors
    with pytest.raises(ValueError, match=f"cannot read {folder / WEIGHTS} as safetensors"):
        open_source(folder)
    assert main(["convert", str(folder), str(tmp_path / "out")]) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_unknown_missing_and_unmatched_keys_are_one_line_errors(golden, tmp_path):
    config = native_config(golden.model_config)
    state = b0_names(golden.net_state_dict())
    extra = write_folder(tmp_path / "extra", {**state, "blocks.0.attn.extra.weight": torch.zeros(2)}, config)
    del state["norm_final.weight"]
    missing = write_folder(tmp_path / "missing", state, config)
    plain = write_folder(tmp_path / "plain", golden.net_state_dict(), config)  # official names, no prefix: no layout
    cases = {extra: r"unexpected \[blocks.0.attn.extra.weight\]", missing: r"missing \[norm_final.weight\]",
             plain: r"matches no JiT layout .* compared with B0: .*missing \[blocks.0.adaLN_modulation.weight, .*"
                    r"unexpected \[blocks.0.adaLN_modulation.1.bias, "}
    for folder, pattern in cases.items():
        with pytest.raises(ValueError, match=pattern) as err:
            open_source(folder)
        assert "\n" not in str(err.value) and str(folder) in str(err.value)
    wide = write_folder(tmp_path / "wide", b0_names(golden.net_state_dict()), {**config, "hidden_size": 128})
    with pytest.raises(ValueError, match=r"wrong shape \[pos_embed: file \(1, 16, 64\) vs config \(1, 16, 128\)"):
        open_source(wide)
    eps = write_folder(tmp_path / "eps", b0_names(golden.net_state_dict()), {**config, "norm_eps": 1e-5})
    with pytest.raises(ValueError, match="norm_eps 1e-05 is not supported"):
        open_source(eps)


def pipeline(tmp_path: Path, golden, index: dict, scheduler: dict | None = None) -> Path:
    root = tmp_path / "pipe"
    write_folder(root / "transformer", b0_names(golden.net_state_dict()), native_config(golden.model_config))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "JiTPipeline", **index}))
    if scheduler is not None:
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return root


def test_scheduler_settings_and_hints_become_the_defaults(golden, tmp_path):
    root = pipeline(tmp_path, golden, {"guidance_scale": 2.9, "guidance_interval_min": 0.0},
                    {"_class_name": "JiTScheduler", "num_train_timesteps": 1000, "t_eps": 0.04, "solver": "euler"})
    for source in (root, root / "transformer"):  # the transformer folder finds its pipeline
        _, info = load_model(source)
        assert (info.t_eps, info.method, info.cfg, info.cfg_interval, info.noise_scale) == (0.04, "euler", 2.9,
                                                                                           (0.0, 1.0), 1.0)  # fmt: skip
    _, bare = load_model(write_folder(tmp_path / "bare", b0_names(golden.net_state_dict()),
                                      native_config(golden.model_config)))  # fmt: skip
    assert (bare.t_eps, bare.method, bare.cfg, bare.cfg_interval) == (0.05, "heun", 1.0, (0.1, 1.0))


IMAGENET_STYLE = ["tench, Tinca tinca", "goldfish, Carassius auratus", "crane", "tabby, tabby cat", "Egyptian cat",
                  "crane", "c6", "c7", "c8", "c9"]  # fmt: skip


def test_class_names_from_id2label_or_a_labels_folder(golden, tmp_path):
    root = pipeline(tmp_path, golden, {"id2label": {str(i): n for i, n in enumerate(IMAGENET_STYLE)}})
    _, info = load_model(root)
    assert info.class_names == IMAGENET_STYLE
    assert parse_classes("goldfish, tabby cat,egyptian cat,9", info.class_names, 10) == [1, 3, 4, 9]
    with pytest.raises(ValueError, match=r"'crane' names classes \[2, 5\]"):
        parse_classes("crane", info.class_names, 10)
    npz = tmp_path / "s.npz"
    assert main(["sample", str(root), "--classes", "goldfish,tench", "--per-class", "1", "--steps", "2",
                 "--device", "cpu", "--npz", str(npz)]) == 0  # fmt: skip
    index = json.loads((root / "model_index.json").read_text())
    (root / "model_index.json").write_text(json.dumps({k: v for k, v in index.items() if k != "id2label"}))
    (root / "labels").mkdir()
    (root / "labels" / "id2label_en.json").write_text(json.dumps({str(i): n for i, n in enumerate(IMAGENET_STYLE)}))
    assert load_model(root)[1].class_names == IMAGENET_STYLE
    (root / "labels" / "id2label_en.json").write_text(json.dumps({"0": "tench"}))
    with pytest.raises(ValueError, match="id2label names 1 classes, the model has 10"):
        open_source(root)


@pytest.mark.parametrize("method", METHODS)
def test_every_solver_loads_back_from_a_diffusers_export(golden, tmp_path, method):
    """A run trained with any --sample-method exports to a diffusers folder that loads with that solver."""
    info = ModelInfo.create(golden.model_config, method=method)
    ours = save_pretrained(golden.model(), tmp_path / "ours", info)
    out = tmp_path / "diffusers"
    assert main(["convert", str(ours), str(out), "--format", "diffusers-b0"]) == 0
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["solver"] == method
    assert load_model(out)[1].method == method
    (out / "jit_diffusion.json").unlink()  # the scheduler's solver alone
    assert load_model(out)[1].method == method


def test_a_foreign_solver_is_refused_naming_every_known_one(golden, tmp_path):
    root = pipeline(tmp_path, golden, {}, {"_class_name": "JiTScheduler", "t_eps": 0.05, "solver": "ddim"})
    with pytest.raises(ValueError, match=f"solver 'ddim' is not one of {re.escape(', '.join(METHODS))}"):
        load_model(root)


def test_a_whole_class_name_with_commas_is_one_class():
    """The full name, as the unknown-class message lists it, is that class once (not its synonyms twice);
    a whole name wins over its parts; several classes of one name are an error."""
    names = [*IMAGENET_STYLE[:6], "maillot", "maillot, tank suit", "c8", "c9"]
    assert parse_classes("tabby, tabby cat", names, 10) == [3]
    assert parse_classes("Tabby,tabby cat , egyptian cat,tench, Tinca tinca", names, 10) == [3, 4, 0]
    assert parse_classes("maillot, tank suit", names, 10) == [7]
    assert parse_classes("maillot,c9", names, 10) == [6, 9]
    assert parse_classes("tabby,tabby", names, 10) == [3, 3]
    with pytest.raises(ValueError, match=r"'crane' names classes \[2, 5\]; give the index instead"):
        parse_classes("tabby, tabby cat, crane", names, 10)
    twins = ["a, b", "A,B", "c"]
    with pytest.raises(ValueError, match=r"'a, b' names classes \[0, 1\]"):
        parse_classes("a, b", twins, 3)


def test_export_refuses_what_the_diffusers_classes_cannot_hold(golden, tmp_path):
    model = golden.model()
    v_info = ModelInfo.create(golden.model_config, prediction="v")
    with pytest.raises(ValueError, match="x-prediction models; this one predicts v"):
        save_diffusers(model, tmp_path / "v", v_info)
    plain = JiT(**vars(preset_config("JiT-Ti/4", input_size=16, num_classes=2, bottleneck_dim=None)))
    with pytest.raises(ValueError, match="always use the bottleneck patch embedding"):
        save_diffusers(plain, tmp_path / "plain", layout="B")
    assert not (tmp_path / "v").exists() and not (tmp_path / "plain").exists()



def test_convert_help_describes_the_formats(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    text = capsys.readouterr().out
    for words in ("--format {jit,diffusers-b0,diffusers-b}", "layout B0", "to_q/to_k/to_v", "index.json", "fp16"):
        assert words in text
