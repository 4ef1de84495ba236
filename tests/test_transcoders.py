"""Transcoders (`L{i}T`): MLP input in, MLP output out — sites, hooks, training, files, evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from sae_core.errors import SAEFileError, UserError
from sae_core.loading import load_sae, save_sae
from sae_core.model.hooks import capture, run_to_sites, splice
from sae_core.model.layout import find_layout
from sae_core.model.sites import Site, parse_site, parse_sites
from sae_core.saes import SAEConfig, SAETrainingOptions, create_training_sae
from sae_core.testing.tiny_models import tiny_model, tiny_tokenizer
from sae_core.training import TrainConfig, train


def _ids() -> torch.Tensor:
    return tiny_tokenizer()("The river city holds a market by the bridge.", return_tensors="pt").input_ids


def _mlp_io(model, layer: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The MLP's input and the MLP output as added to the residual stream, read with plain torch hooks."""
    layout = find_layout(model)
    seen = {}

    def keep(name, pick):
        def hook(module, args, out) -> None:  # returns None: the module's output is left as it is
            seen[name] = pick(args, out).detach().clone()
        return hook

    handles = [
        layout.layers[layer].mlp.register_forward_hook(keep("in", lambda args, out: args[0])),
        layout.mlp_out[layer].register_forward_hook(keep("out", lambda args, out: out)),
    ]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return seen["in"], seen["out"]


def test_transcoder_sites_are_named_as_saelens_names_their_hooks():
    site = parse_site("L3T", n_layers=6)
    assert site == Site(3, "transcoder") and site.is_transcoder and site.short == "L3T"
    assert site.hook_name == "blocks.3.ln2.hook_normalized"
    assert site.target == Site(3, "mlp_out") and site.hook_name_out == site.target.hook_name == "blocks.3.hook_mlp_out"
    assert Site(3, "mlp_out").hook_name_out == ""
    assert parse_site("blocks.3.ln2.hook_normalized") == site
    assert [s.short for s in parse_sites("L*/2T", 6)] == ["L0T", "L2T", "L4T"]
    assert not any(s.is_transcoder for s in parse_sites("all", 6))  # `all` names the three SAE sites
    # in execution order the transcoder reads the MLP input before the MLP output exists
    assert Site(3, "attn_out").order_key < site.order_key < Site(3, "mlp_out").order_key < Site(3, "resid_post").order_key


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gpt2"])
def test_capture_reads_the_mlp_input_and_splice_writes_the_mlp_output(family):
    """Gemma 2's MLP output is its post-MLP norm's: the splice takes the MLP's input from the MLP, a different module."""
    model = tiny_model(family, n_layers=2)
    ids = _ids()
    mlp_in, mlp_out = _mlp_io(model, 1, ids)
    acts = run_to_sites(model, ids, sites=["L1T", "L1M"])
    torch.testing.assert_close(acts[Site(1, "transcoder")], mlp_in, rtol=0, atol=0)
    torch.testing.assert_close(acts[Site(1, "mlp_out")], mlp_out, rtol=0, atol=0)

    sources = []

    def fn(x, source):
        sources.append(source)
        return torch.zeros_like(x)

    with splice(model, "L1T", fn), capture(model, ["L1M"], stop_early=False) as seen:
        with torch.no_grad():
            model(ids)
    torch.testing.assert_close(sources[0], mlp_in, rtol=0, atol=0)
    assert bool((seen[Site(1, "mlp_out")] == 0).all())


def _transcoder_cfg(d: int = 16, d_sae: int = 40, k: int = 5) -> SAEConfig:
    return SAEConfig("topk", d, d_sae, k=k, hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out", d_out=d)


def test_the_inference_transcoder_in_raw_units_equals_training_on_scaled_rows():
    """Input and target are scaled separately in training (s_in, s_out) and the input centre is subtracted; folding them
    gives the same latents (/ s_out) and predictions (/ s_out) on the raw activations."""
    torch.manual_seed(0)
    cfg = _transcoder_cfg()
    sae = create_training_sae(cfg, SAETrainingOptions(), torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
        sae.input_centre.normal_(0, 2.0)
    x, y = torch.randn(32, 16) * 3, torch.randn(32, 16) * 0.05
    s_in, s_out = 1.7, 40.0
    out = sae.training_forward(torch.cat([x * s_in, y * s_out], 1), dead_mask=None, step_frac=0.0)
    inference = sae.to_inference(s_in, s_out)
    assert inference.cfg.transcoder and inference.W_dec.shape == (40, 16)
    torch.testing.assert_close(inference(x) * s_out, out.x_hat, rtol=1e-4, atol=1e-5)
    # the loss is the FVU of the target, not of the input
    fvu = (y * s_out - out.x_hat).pow(2).sum() / (y * s_out - (y * s_out).mean(0)).pow(2).sum()
    torch.testing.assert_close(out.losses["fvu"], fvu, rtol=1e-4, atol=0)


def test_a_saved_topk_transcoder_is_what_saelens_loads(tmp_path):
    pytest.importorskip("sae_lens")
    from sae_lens import SAE as SAELensSAE

    cfg = _transcoder_cfg()
    sae = create_training_sae(cfg, SAETrainingOptions(), torch.Generator().manual_seed(2))
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.5)
        sae.b_enc.normal_(0, 0.1)
    inference = sae.to_inference(1.0)
    save_sae(inference, tmp_path / "tc")
    raw = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert raw["apply_b_dec_to_input"] is False and raw["d_out"] == 16
    assert raw["metadata"]["hook_name_out"] == "blocks.0.hook_mlp_out"
    theirs = SAELensSAE.load_from_disk(str(tmp_path / "tc"))
    ours = load_sae(tmp_path / "tc")
    assert ours.cfg.transcoder and ours.cfg.hook_name_out == "blocks.0.hook_mlp_out"
    x = torch.randn(20, 16) * 2
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    assert theirs.cfg.metadata.hook_name_out == "blocks.0.hook_mlp_out"  # where SAELens's hooked models splice it


@pytest.mark.parametrize("kind", ["transcoder", "jumprelu_transcoder"])
def test_saelens_transcoders_load_with_the_same_encodings(kind, tmp_path):
    pytest.importorskip("sae_lens")
    from sae_lens.saes.transcoder import JumpReLUTranscoder, JumpReLUTranscoderConfig, Transcoder, TranscoderConfig

    cls, cfg_cls = (Transcoder, TranscoderConfig) if kind == "transcoder" else (JumpReLUTranscoder, JumpReLUTranscoderConfig)
    theirs = cls(cfg_cls(d_in=16, d_sae=24, d_out=16, apply_b_dec_to_input=False))
    theirs.cfg.metadata.hook_name = "blocks.2.ln2.hook_normalized"
    theirs.cfg.metadata.hook_name_out = "blocks.2.hook_mlp_out"
    torch.manual_seed(3)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.3)
        if kind == "jumprelu_transcoder":
            theirs.threshold.uniform_(0.0, 0.3)
    theirs.save_model(str(tmp_path / kind))
    ours = load_sae(tmp_path / kind)
    assert ours.cfg.transcoder and parse_site(ours.cfg.hook_name).is_transcoder
    x = torch.randn(30, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_skip_transcoders_and_transcoders_without_an_output_hook_are_refused(tmp_path):
    cfg = _transcoder_cfg()
    save_sae(create_training_sae(cfg, SAETrainingOptions()).to_inference(1.0), tmp_path / "tc")
    path = tmp_path / "tc" / "cfg.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "architecture": "skip_transcoder"}))
    with pytest.raises(SAEFileError, match="skip path"):
        load_sae(tmp_path / "tc")
    raw["architecture"] = "transcoder"
    del raw["metadata"]["hook_name_out"]
    path.write_text(json.dumps(raw))
    with pytest.raises(SAEFileError, match="hook_name_out"):
        load_sae(tmp_path / "tc")


def _cfg(tiny_model_dir, tiny_corpus, out, **overrides) -> TrainConfig:
    values = dict(model=str(tiny_model_dir), corpus=str(tiny_corpus), sites="L1T", arch="topk", k=4, expansion=2,
                  tokens=8192, batch_size=256, context_size=32, lm_batch_size=4, chunk_tokens=1024, checkpoint_every=2048,
                  dead_tokens=1024, eval=False, eval_tokens=1024, ce_tokens=256, out=str(out), threads=1)
    return TrainConfig(**{**values, **overrides})


def test_a_transcoder_trains_resumes_and_evaluates_against_the_mlp_output(tiny_model_dir, tiny_corpus, tiny_loaded, tmp_path):
    from sae_core.evaluation.metrics import evaluate_saes
    from sae_core.text.corpus import iter_documents
    from sae_core.text.tokens import token_batches

    run = train(_cfg(tiny_model_dir, tiny_corpus, tmp_path / "run"), log=lambda _: None)
    records = [json.loads(line) for line in run.log_path.read_text().splitlines()]
    assert records[-1]["fvu"] < records[0]["fvu"] * 0.8
    (folder,) = run.sae_dirs()
    assert folder.name == "blocks.1.ln2.hook_normalized"
    sae = load_sae(folder)
    meta = json.loads((folder / "cfg.json").read_text())["metadata"]
    assert meta["activation_scale_out_folded"] != meta["activation_scale_folded"]

    # resumed from a checkpoint: the same transcoder, bit for bit
    cfg = _cfg(tiny_model_dir, tiny_corpus, tmp_path / "b")
    train(cfg, log=lambda _: None, stop_after_tokens=2048)
    resumed = train(cfg, log=lambda _: None)
    (again,) = resumed.sae_dirs()
    assert torch.equal(load_sae(again).W_enc, sae.W_enc) and torch.equal(load_sae(again).b_dec, sae.b_dec)

    # held-out FVU is that of the MLP output predicted from the MLP input (no outliers here: threshold off)
    sae.cfg.metadata.pop("outlier_norm_threshold", None)
    site = Site(1, "transcoder")
    batches = list(token_batches(iter_documents(str(tiny_corpus), "eval"), tiny_loaded.tokenizer, 32, 4))[:2]
    result = evaluate_saes(tiny_loaded, {site: sae}, batches, eval_tokens=10**9, ce_tokens=0)[site]
    ins, outs = [], []
    for batch in batches:
        mlp_in, mlp_out = _mlp_io(tiny_loaded.model, 1, batch.input_ids)
        ins.append(mlp_in[batch.real])
        outs.append(mlp_out[batch.real])
    x, y = torch.cat(ins), torch.cat(outs)
    with torch.no_grad():
        fvu = float((y - sae(x)).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert result["fvu"] == pytest.approx(fvu, rel=1e-4)


def test_transcoder_sites_need_topk(tiny_model_dir, tiny_corpus, tmp_path):
    with pytest.raises(UserError, match="transcoder sites .*L1T.* --arch topk"):
        train(_cfg(tiny_model_dir, tiny_corpus, tmp_path / "run", arch="jumprelu"), log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_gemma_scope_transcoders_encode_and_predict_as_they_ship(tmp_path):
    """`gemma-scope-2b-pt-transcoders/layer_1/…/params.npz`: JumpReLU of `x @ W_enc + b_enc` (b_dec not folded: it
    biases the MLP output); an affine-skip Gemma Scope 2 transcoder is refused."""
    import numpy as np

    from sae_core.runs.import_saes import import_saes

    g = torch.Generator().manual_seed(4)
    params = {"W_enc": torch.randn(64, 24, generator=g) * 0.3, "b_enc": torch.randn(24, generator=g) * 0.2,
              "W_dec": torch.randn(24, 64, generator=g) * 0.3, "b_dec": torch.randn(64, generator=g),
              "threshold": torch.rand(24, generator=g) * 0.5}
    folder = tmp_path / "gemma-scope-2b-pt-transcoders" / "layer_1" / "width_16k" / "average_l0_9"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{n: t.numpy() for n, t in params.items()})
    sae = load_sae(folder)
    assert sae.cfg.transcoder and sae.cfg.hook_name == "blocks.1.ln2.hook_normalized"
    assert sae.cfg.hook_name_out == "blocks.1.hook_mlp_out"
    x = torch.randn(10, 64)
    pre = x @ params["W_enc"] + params["b_enc"]
    acts = torch.relu(pre) * (pre > params["threshold"])
    torch.testing.assert_close(sae.encode(x), acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x), acts @ params["W_dec"] + params["b_dec"], rtol=1e-5, atol=1e-5)

    # an MLP-output SAE is not a transcoder, and the other way round
    from sae_core.model.load import load_model
    from sae_core.testing.tiny_models import tiny_model as build

    model_dir = tmp_path / "model"
    build("qwen3", n_layers=2).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    loaded = load_model(str(model_dir))
    with pytest.raises(SAEFileError, match="is a transcoder but L1M is an SAE site"):
        import_saes([f"{folder}=L1M"], tmp_path / "run", loaded, model=None, outlier_factor=0, log=lambda m: None)
    run = import_saes([folder], tmp_path / "run", loaded, model=None, outlier_factor=0, log=lambda m: None)
    assert load_sae(run.path / "saes" / "blocks.1.ln2.hook_normalized").cfg.hook_name_out == "blocks.1.hook_mlp_out"

    two = tmp_path / "gemma-scope-2-270m-pt" / "transcoder" / "layer_1_width_16k_l0_small"
    two.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({("w_" + n[2:] if n.startswith("W_") else n): t.contiguous() for n, t in params.items()}, str(two / "params.safetensors"))
    (two / "config.json").write_text(json.dumps({"architecture": "jump_relu", "type": "transcoder", "affine_connection": True,
                                                 "hf_hook_point_in": "model.layers.1.pre_feedforward_layernorm.output"}))
    with pytest.raises(SAEFileError, match="affine skip connection"):
        load_sae(two)
    (two / "config.json").write_text(json.dumps({"architecture": "jump_relu", "type": "transcoder", "affine_connection": False,
                                                 "hf_hook_point_in": "model.layers.1.pre_feedforward_layernorm.output"}))
    torch.testing.assert_close(load_sae(two)(x), sae(x), rtol=1e-5, atol=1e-5)


def test_an_sae_given_to_splice_replaces_the_output_by_its_reconstruction_of_the_source():
    model = tiny_model("qwen3", n_layers=2)
    ids = _ids()
    mlp_in, _ = _mlp_io(model, 1, ids)
    cfg = SAEConfig("topk", 64, 96, k=8, hook_name="blocks.1.ln2.hook_normalized", hook_name_out="blocks.1.hook_mlp_out", d_out=64)
    sae = create_training_sae(cfg, SAETrainingOptions(), torch.Generator().manual_seed(5)).to_inference(1.0)
    with splice(model, "L1T", sae), capture(model, ["L1M"], stop_early=False) as seen, torch.no_grad():
        model(ids)
        torch.testing.assert_close(seen[Site(1, "mlp_out")], sae(mlp_in), rtol=1e-5, atol=1e-6)


def test_a_transcoder_starts_with_its_input_centred_so_its_latents_take_turns():
    """An MLP input after its norm is far from centred; the encoder subtracts the inputs' centre (here their mean), so
    the first top-k picks many different latents instead of the few aligned with the mean. The centre is a buffer:
    fixed in training, kept in checkpoints."""
    from sae_core.saes.topk import FusedTopKEncoder, block_rows

    g = torch.Generator().manual_seed(6)
    cfg = _transcoder_cfg(d=32, d_sae=256, k=4)
    x = torch.randn(2048, 32, generator=g) + 6 * torch.randn(32, generator=g)  # a large shared mean
    rows = torch.cat([x, torch.randn(2048, 32, generator=g)], 1)

    def distinct_latents(sae) -> int:
        source = sae.cfg.split_rows(rows)[0]
        _, idx, _, _ = FusedTopKEncoder.apply(source, sae.W_enc, sae.b_enc, sae.encoder_offset, 4, None, 0,
                                              block_rows(2048, 256, source.device))
        return int(idx.unique().numel())

    plain = create_training_sae(cfg, SAETrainingOptions(b_dec_init="mean"), torch.Generator().manual_seed(7))
    centred = create_training_sae(cfg, SAETrainingOptions(b_dec_init="mean"), torch.Generator().manual_seed(7))
    with torch.no_grad():
        centred.init_from_data(rows)
    torch.testing.assert_close(centred.input_centre, x.mean(0), rtol=1e-5, atol=1e-5)
    assert not centred.input_centre.requires_grad and "input_centre" in centred.state_dict()
    assert distinct_latents(centred) > 2 * distinct_latents(plain)
