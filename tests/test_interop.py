"""diffusers interop (docs/interop.md): UNet2DModel in and out, scheduler configs both ways, whole pipelines.

diffusers and PyTorch are the oracle here; the module skips cleanly without them. PyTorch runs on one
thread: the models are tiny and the machine is shared.
"""
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
torch.set_num_threads(1)

from minidiff import checkpoint, cli, diffusion, models, nn  # noqa: E402
from minidiff.autograd import Tensor, no_grad  # noqa: E402
from minidiff.interop import diffusers as interop  # noqa: E402
from minidiff.models.ddpm import DDPM  # noqa: E402
from minidiff.models.unet_diffusers import DiffusersUNet  # noqa: E402


def diffusers_features_float64(proj, timesteps):
    """diffusers' get_timestep_embedding restated in float64 (diffusers itself computes it in float32)."""
    half = proj.num_channels // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - proj.downscale_freq_shift)
    angles = timesteps[:, None].double() * torch.exp(exponent)[None]
    e = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return torch.cat([e[:, half:], e[:, :half]], dim=-1) if proj.flip_sin_to_cos else e


@st.composite
def unet_configs(draw):
    """Small UNet2DModel configs: 1 or 3 channels, 2-3 resolutions, attention anywhere, optional class embedding."""
    levels = draw(st.integers(2, 3))
    attention = draw(st.lists(st.booleans(), min_size=levels, max_size=levels))
    up_attention = draw(st.sampled_from([attention[::-1], draw(st.lists(st.booleans(), min_size=levels,
                                                                       max_size=levels))]))
    channels = draw(st.sampled_from([1, 3]))
    return dict(sample_size=8, in_channels=channels, out_channels=channels,
                block_out_channels=[8 * draw(st.integers(1, 2)) for _ in range(levels)],
                layers_per_block=draw(st.integers(1, 2)),
                down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
                up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in up_attention],
                norm_num_groups=draw(st.sampled_from([2, 4, 8])), attention_head_dim=draw(st.sampled_from([None, 4])),
                num_class_embeds=draw(st.sampled_from([None, 3])), flip_sin_to_cos=draw(st.booleans()),
                freq_shift=draw(st.sampled_from([0, 1])), downsample_padding=draw(st.sampled_from([0, 1])),
                norm_eps=draw(st.sampled_from([1e-5, 1e-6])), center_input_sample=draw(st.booleans()),
                add_attention=draw(st.booleans()), time_embedding_dim=draw(st.sampled_from([None, 24])))


def _inputs(config, seed, B=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, config["in_channels"], 8, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (B,), generator=g)
    y = None if config["num_class_embeds"] is None else torch.randint(0, config["num_class_embeds"], (B,), generator=g)
    return x, t, y


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@settings(max_examples=6, deadline=None)
@given(unet_configs(), st.integers(0, 2 ** 16))
def test_imported_unet2dmodel_gives_diffusers_eps_and_exports_back_identically(config, seed):
    torch.manual_seed(seed)
    theirs = diffusers.UNet2DModel(**config).eval()
    state = {k: v.numpy() for k, v in theirs.state_dict().items()}
    x, t, y = _inputs(config, seed)
    for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-10)):
        net = theirs.to(torch.float32 if dtype == np.float32 else torch.float64)
        if dtype == np.float64:   # give diffusers float64 time features too: its own are float32 whatever the dtype
            net.time_proj.forward = lambda ts, proj=net.time_proj: diffusers_features_float64(proj, ts)
        with torch.no_grad():
            ref = net(x.to(net.dtype), t, class_labels=y).sample.numpy()
        ours = DiffusersUNet(**interop.unet_config(dict(theirs.config)), dtype=dtype)
        ours.load_state_dict(interop.unet_state_from_diffusers(state))
        with no_grad():   # minidiff's t is diffusers' t + 1
            got = ours(x.numpy().astype(dtype), t.numpy() + 1, None if y is None else y.numpy()).data
        assert got.dtype == dtype and _rel(got, ref) < tol, (dtype, _rel(got, ref))
        if dtype == np.float32:   # exported back: the same names, dtypes and bits
            back = interop.unet_state_to_diffusers(ours.state_dict())
            assert sorted(back) == sorted(state)
            assert all(back[k].dtype == state[k].dtype and np.array_equal(back[k], state[k]) for k in state)


def test_export_back_is_the_same_state_dict_bit_for_bit(tmp_path):
    config = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 16], layers_per_block=1,
                  down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
                  norm_num_groups=4, attention_head_dim=4, num_class_embeds=2)
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**config)
    theirs.save_pretrained(tmp_path / "in")
    ours, ours_config = interop.load_unet(tmp_path / "in")
    interop.save_unet(ours, ours_config, tmp_path / "out")
    again = diffusers.UNet2DModel.from_pretrained(tmp_path / "out")
    a, b = theirs.state_dict(), again.state_dict()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert {k: v for k, v in again.config.items() if not k.startswith("_")} == \
        {k: v for k, v in theirs.config.items() if not k.startswith("_")}


@given(st.lists(st.integers(0, 999), min_size=1, max_size=6), st.sampled_from([8, 9, 32]), st.booleans(),
       st.sampled_from([0, 1]))
def test_timestep_features_are_diffusers_get_timestep_embedding(t, dim, flip, shift):
    from diffusers.models.embeddings import get_timestep_embedding
    t = np.asarray(t)
    ours = nn.sinusoidal_embedding(t, dim, dtype=np.float64, freq_shift=shift, flip_sin_to_cos=flip)
    theirs = get_timestep_embedding(torch.from_numpy(t), dim, flip, shift).numpy()
    # diffusers rounds t * omega to float32: up to |t| * 2^-24 per angle
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-4)
    half = dim // 2
    omega = 10000.0 ** (-np.arange(half) / (half - shift))
    sin, cos = np.sin(t[:, None] * omega), np.cos(t[:, None] * omega)
    np.testing.assert_allclose(ours[:, :2 * half], np.hstack([cos, sin] if flip else [sin, cos]), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- schedulers

@pytest.mark.parametrize("beta_schedule", sorted(interop.BETA_SCHEDULES))
@pytest.mark.parametrize("T", [1000, 50])
def test_scheduler_configs_give_the_same_betas_and_map_back(beta_schedule, T):
    config = dict(num_train_timesteps=T, beta_schedule=beta_schedule, beta_start=0.00085, beta_end=0.012,
                  prediction_type="v_prediction", clip_sample=False)
    theirs = diffusers.DDPMScheduler(**config)
    hp = interop.schedule_from_diffusers(config)
    schedule = diffusion.make_schedule(hp["schedule"], hp["T"], **hp["schedule_options"])
    np.testing.assert_allclose(schedule.betas[1:], theirs.betas.numpy(), rtol=2e-6)          # diffusers: float32
    # diffusers' 1 - beta_t and their product are float32: beta_t = 0.999 (cosine's cap) leaves 1 - beta_t 2^-24/0.001
    np.testing.assert_allclose(schedule.alpha_bars[1:], theirs.alphas_cumprod.numpy(), rtol=2e-4)
    assert hp["prediction"] == "v" and hp["clip_x0"] is False
    back = interop.schedule_to_diffusers(hp)
    again = diffusers.DDPMScheduler.from_config(back)
    np.testing.assert_allclose(again.betas.numpy(), theirs.betas.numpy(), rtol=1e-6)
    assert {k: back[k] for k in ("num_train_timesteps", "beta_schedule", "prediction_type", "clip_sample")} == \
        {k: config[k] for k in ("num_train_timesteps", "beta_schedule", "prediction_type", "clip_sample")}


@pytest.mark.parametrize("spacing, offset", [("leading", 0), ("leading", 1), ("trailing", 0)])
def test_ddim_timesteps_are_diffusers_shifted_by_one(spacing, offset):
    theirs = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
    theirs.set_timesteps(50)
    kept = interop.ddim_timesteps(dict(theirs.config), 50)
    assert kept.tolist() == sorted((theirs.timesteps.numpy() + 1).tolist())


@pytest.mark.parametrize("what, config, key", [
    ("unet", {"time_embedding_type": "fourier"}, "time_embedding_type"),
    ("unet", {"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
    ("unet", {"class_embed_type": "timestep"}, "class_embed_type"),
    ("unet", {"down_block_types": ["CrossAttnDownBlock2D"]}, "CrossAttnDownBlock2D"),
    ("unet", {"mid_block_scale_factor": 1.414}, "mid_block_scale_factor"),
    ("unet", {"upsample_type": "resnet"}, "upsample_type"),
    ("unet", {"cross_attention_dim": 768}, "cross_attention_dim"),
    ("scheduler", {"variance_type": "learned_range"}, "variance_type"),
    ("scheduler", {"prediction_type": "flow"}, "prediction_type"),
    ("scheduler", {"beta_schedule": "exp"}, "beta_schedule"),
    ("scheduler", {"thresholding": True}, "thresholding"),
    ("scheduler", {"trained_betas": [0.1, 0.2]}, "trained_betas"),
    ("scheduler", {"set_alpha_to_one": False}, "set_alpha_to_one"),
    ("ddim", {"timestep_spacing": "linspace"}, "timestep_spacing"),
])
def test_unsupported_config_values_are_refused_by_name(what, config, key):
    call = {"unet": interop.unet_config, "scheduler": interop.schedule_from_diffusers,
            "ddim": lambda c: interop.ddim_timesteps(c, 50)}[what]
    with pytest.raises(ValueError, match=key):
        call(config)


# ---------------------------------------------------------------- whole pipelines

def _random_ddpm(T, seed=0, schedule="cosine", **hparams):
    """A tiny DDPM with a diffusers-layout U-Net and non-zero random weights (the output conv starts at zero)."""
    model = DDPM(image_shape=(1, 8, 8), T=T, schedule=schedule, unet="diffusers", base_channels=8,
                 channel_mults=(1, 2), dropout=0.0, **hparams)
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data = (p.data + 0.05 * rng.standard_normal(p.data.shape)).astype(p.data.dtype)
    return model.eval()


def test_ddpm_pipeline_and_ddpm_sample_draw_the_same_images(tmp_path):
    model = _random_ddpm(T=20)
    interop.export_pipeline(model, tmp_path)
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=20,
                  output_type="np").images                                     # (B, H, W, C) in [0, 1]
    g = torch.Generator().manual_seed(0)      # replay the pipeline's draws: x_T, then z at t_d = 19..1
    x_T = torch.randn((2, 1, 8, 8), generator=g).numpy()
    noise = [torch.randn((2, 1, 8, 8), generator=g).numpy() for _ in range(19)] + [np.zeros((2, 1, 8, 8), np.float32)]
    ours = diffusion.ddpm_sample(model.eps_array, (2, 1, 8, 8), model.schedule, x_T=x_T, noise=noise, clip_x0=True)
    np.testing.assert_allclose(np.clip(ours / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1), images, atol=2e-5)


@pytest.mark.parametrize("clip", [True, False])
def test_ddim_scheduler_50_steps_and_ddim_sample_agree(tmp_path, clip):
    model = _random_ddpm(T=100, schedule="linear", clip_x0=clip)
    interop.export_pipeline(model, tmp_path)
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path, subfolder="unet")
    scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    scheduler.set_timesteps(50)
    x_T = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    x = x_T
    with torch.no_grad():   # minidiff's clip_x0 re-derives eps from the clipped x_0: use_clipped_model_output
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, use_clipped_model_output=True).prev_sample
    kept = interop.ddim_timesteps(dict(scheduler.config), 50)
    ours = diffusion.ddim_sample(model.eps_array, (2, 1, 8, 8), model.schedule, steps=kept, x_T=x_T.numpy(),
                                 clip_x0=clip)
    assert _rel(ours, x.numpy()) < 1e-5


def test_cli_export_then_import_round_trips_a_checkpoint(tmp_path, capsys):
    model = _random_ddpm(T=20, seed=3)
    path = tmp_path / "model.safetensors"
    checkpoint.save_checkpoint(path, model.state_dict(), {"model": model.name, "hparams": model.hparams, "step": 7})
    pipe = str(tmp_path / "pipe")
    assert cli.main(["export", "--checkpoint", str(path), "--format", "diffusers", "--out", pipe]) == 0
    assert sorted(os.listdir(tmp_path / "pipe")) == ["model_index.json", "scheduler", "unet"]
    assert cli.main(["import", "--from", str(tmp_path / "pipe"), "--out", str(tmp_path / "back.safetensors")]) == 0
    back, state = models.load(tmp_path / "back.safetensors")
    x, t = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32), np.array([1, 20])
    np.testing.assert_array_equal(back.eps_array(x, t), model.eps_array(x, t))
    assert state["hparams"]["schedule"] == "cosine" and back.T == 20
    # a bare UNet2DModel folder gets DDPMScheduler's defaults
    assert cli.main(["import", "--from", os.path.join(pipe, "unet"), "--out", str(tmp_path / "u.safetensors")]) == 0
    assert models.load(tmp_path / "u.safetensors")[0].T == 1000


def test_the_teaching_unet_is_refused_for_diffusers_export(tmp_path):
    model = DDPM(image_shape=(1, 8, 8), T=10, base_channels=8, channel_mults=(1,), attention_resolutions=())
    with pytest.raises(ValueError, match="unet=diffusers"):
        interop.export_pipeline(model, tmp_path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    config = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 16], layers_per_block=1,
                  down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
                  norm_num_groups=4)
    diffusers.UNet2DModel(**config).save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        stored = json.load(f)
    stored["layers_per_block"] = 2
    with open(tmp_path / "config.json", "w") as f:
        json.dump(stored, f)
    with pytest.raises(checkpoint.CheckpointError, match="does not fit its config.json: .*missing keys"):
        interop.load_unet(tmp_path)


# ---------------------------------------------------------------- the diffusers-layout U-Net inside minidiff

@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_with_the_diffusers_unet_trains_and_converts_its_prediction(prediction):
    model = DDPM(image_shape=(1, 8, 8), T=10, unet="diffusers", base_channels=8, channel_mults=(1, 2),
                 prediction=prediction, unet_config={"num_class_embeds": None})
    rng = np.random.default_rng(0)
    x0, eps = (rng.standard_normal((4, 1, 8, 8)).astype(np.float32) for _ in range(2))
    loss, _ = model.loss((x0, None), rng)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    t = np.array([1, 4, 7, 10])
    x0_64, eps_64 = x0.astype(np.float64), eps.astype(np.float64)     # the target law, free of float32 rounding
    target = model.target(x0_64, eps_64, t)
    x_t = diffusion.q_sample(x0_64, t, eps_64, model.schedule)
    np.testing.assert_allclose(diffusion.predict_x0(target, x_t, t, model.schedule, prediction), x0_64, atol=1e-9)
    x_t = x_t.astype(np.float32)
    model.eval()
    with no_grad():
        raw = model(Tensor(x_t), t).data
    expected = {"eps": raw, "x0": diffusion.eps_from_x0(x_t, t, raw, model.schedule),
                "v": diffusion.eps_from_v(x_t, t, raw, model.schedule)}[prediction]
    np.testing.assert_allclose(model.eps_array(x_t, t), expected, rtol=1e-6, atol=1e-6)
