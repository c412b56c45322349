"""diffusers' formats in and out: UNet2DModel folders, DDPMScheduler / DDIMScheduler configs (docs/interop.md).

A diffusers DDPM pipeline folder holds

    model_index.json                         {"_class_name": "DDPMPipeline", "unet": [...], "scheduler": [...]}
    unet/config.json                         UNet2DModel's constructor arguments
    unet/diffusion_pytorch_model.safetensors its state dict
    scheduler/scheduler_config.json          DDPMScheduler's constructor arguments

and minidiff reads and writes all four without importing diffusers or PyTorch: the U-Net becomes a
minidiff.models.unet_diffusers.DiffusersUNet (the same layout), the scheduler a minidiff Schedule plus
the sampling settings. Names inside the blocks differ in three places only (`_RENAMES`): a ResBlock's
`emb` / `skip` are diffusers' `time_emb_proj` / `conv_shortcut`, and an attention's fused `qkv`
projection (3C, C) is diffusers' `to_q`, `to_k`, `to_v` stacked by rows, its `norm` / `proj` are
`group_norm` / `to_out.0`. Timesteps shift by one (minidiff 1..T, diffusers 0..T-1) inside the U-Net
only (unet_diffusers.diffusers_timestep). Anything this mapping cannot represent is refused by name.
"""
import inspect
import json
import os
import re

import numpy as np

from minidiff import checkpoint
from minidiff.diffusion import SCHEDULES
from minidiff.models.ddpm import DDPM
from minidiff.models.unet_diffusers import UNSUPPORTED, DiffusersUNet, check_supported, minidiff_timestep

DIFFUSERS_VERSION = "0.42.1"            # the version whose formats tests/test_interop.py checks
WEIGHTS = "diffusion_pytorch_model.safetensors"

# ---------------------------------------------------------------- the U-Net's state dict

# (minidiff pattern, diffusers replacement) and back; applied to the key's tail inside resnets / attentions.
_RENAMES = [(r"(\.resnets\.\d+)\.emb\.", r"\1.time_emb_proj."), (r"(\.resnets\.\d+)\.skip\.", r"\1.conv_shortcut."),
            (r"(\.attentions\.\d+)\.norm\.", r"\1.group_norm."), (r"(\.attentions\.\d+)\.proj\.", r"\1.to_out.0.")]
_BACK = [(r"(\.resnets\.\d+)\.time_emb_proj\.", r"\1.emb."), (r"(\.resnets\.\d+)\.conv_shortcut\.", r"\1.skip."),
         (r"(\.attentions\.\d+)\.group_norm\.", r"\1.norm."), (r"(\.attentions\.\d+)\.to_out\.0\.", r"\1.proj."),
         # the attention names of diffusers before 0.15 (still in older checkpoints)
         (r"(\.attentions\.\d+)\.proj_attn\.", r"\1.proj."), (r"(\.attentions\.\d+)\.query\.", r"\1.to_q."),
         (r"(\.attentions\.\d+)\.key\.", r"\1.to_k."), (r"(\.attentions\.\d+)\.value\.", r"\1.to_v.")]
_QKV = ("to_q", "to_k", "to_v")


def _rename(key, rules):
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def unet_state_to_diffusers(state):
    """minidiff DiffusersUNet state {name: array} -> UNet2DModel state dict (qkv split into to_q, to_k, to_v)."""
    out = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        if head.endswith(".qkv"):
            for name, part in zip(_QKV, np.split(np.asarray(value), 3, axis=0)):
                out[f"{head[:-len('qkv')]}{name}.{leaf}"] = np.ascontiguousarray(part)
        else:
            out[_rename(key, _RENAMES)] = np.asarray(value)
    return out


def unet_state_from_diffusers(state):
    """UNet2DModel state dict -> minidiff DiffusersUNet state (to_q, to_k, to_v stacked into qkv)."""
    out, parts = {}, {}
    for key, value in state.items():
        key = _rename(key, _BACK)
        head, _, leaf = key.rpartition(".")
        prefix, _, name = head.rpartition(".")
        if name in _QKV:
            parts.setdefault(f"{prefix}.qkv.{leaf}", {})[name] = np.asarray(value)
        else:
            out[key] = np.asarray(value)
    for key, qkv in parts.items():
        if set(qkv) != set(_QKV):
            raise checkpoint.CheckpointError(f"attention weights {key}: need to_q, to_k and to_v, got {sorted(qkv)}")
        out[key] = np.concatenate([qkv[name] for name in _QKV], axis=0)
    return out


# ---------------------------------------------------------------- the U-Net's config

def unet_config(config):
    """The DiffusersUNet arguments of a UNet2DModel config.json dict, all of them (UNet2DModel's defaults filled in).

    Metadata keys ("_class_name", ...) are dropped; keys DiffusersUNet does not take and values it does not
    implement are refused, naming them.
    """
    accepted = set(inspect.signature(DiffusersUNet).parameters) - {"dtype"}
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ValueError(f"diffusers UNet2DModel config: keys {unknown} are not supported (known: {sorted(accepted)})")
    check_supported(config)
    defaults = {k: p.default for k, p in inspect.signature(DiffusersUNet).parameters.items() if k != "dtype"}
    return {**defaults, **{k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}


def load_unet(folder, dtype=None):
    """(DiffusersUNet with the folder's weights, its config) from a UNet2DModel folder (config.json + weights)."""
    config = unet_config(_read_json(os.path.join(folder, "config.json")))
    if config.get("sample_size") is None:
        raise ValueError(f"{folder}/config.json: sample_size is needed to know the image size")
    tensors, _ = checkpoint.load_file(os.path.join(folder, WEIGHTS))
    model = DiffusersUNet(**config, dtype=dtype)
    try:
        model.load_state_dict(unet_state_from_diffusers(tensors))
    except (KeyError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{folder}/{WEIGHTS} does not fit its config.json: {e.args[0]}") from None
    return model, config


def save_unet(model, config, folder):
    """Write a UNet2DModel folder: config.json (with _class_name) and the safetensors weights."""
    os.makedirs(folder, exist_ok=True)
    _write_json(os.path.join(folder, "config.json"),
                {"_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION, **unet_config(config)})
    checkpoint.save_file(os.path.join(folder, WEIGHTS), unet_state_to_diffusers(model.state_dict()),
                         metadata={"format": "pt"})


# ---------------------------------------------------------------- schedulers

# diffusers beta_schedule -> minidiff schedule; each computes the same betas (diffusers' linear is minidiff's
# linear without its 1000/T scaling of the end points; scaled_linear is quadratic; squaredcos_cap_v2 is the
# cosine schedule at its defaults s = 0.008, max_beta = 0.999).
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine",
                  "sigmoid": "sigmoid"}
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCE_TYPES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small"}   # the same sigma_t^2 = beta~_t
# Scheduler keys whose other values minidiff's samplers do not implement.
SCHEDULER_REFUSED = {"trained_betas": (None,), "thresholding": (False,), "rescale_betas_zero_snr": (False,),
                     "clip_sample_range": (1.0,), "set_alpha_to_one": (True,)}
SCHEDULER_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                      "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon"}


def _refuse(what, key, value, allowed):
    raise ValueError(f"diffusers {what}: {key}={value!r} is not supported (supported: {list(allowed)})")


def _linear_scale(T):
    return 1000.0 / T     # minidiff's linear schedule scales its end points by 1000/T (schedule.py, eq. F7)


def schedule_from_diffusers(config):
    """DDPM hparams (T, schedule, schedule_options, prediction, clip_x0) of a DDPM/DDIMScheduler config dict."""
    config = {**SCHEDULER_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    for key, allowed in SCHEDULER_REFUSED.items():
        if key in config and config[key] not in allowed:
            _refuse("scheduler config", key, config[key], allowed)
    for key, table in (("beta_schedule", BETA_SCHEDULES), ("prediction_type", PREDICTION_TYPES),
                       ("variance_type", VARIANCE_TYPES)):
        if config[key] not in table:
            _refuse("scheduler config", key, config[key], table)
    T, name = int(config["num_train_timesteps"]), BETA_SCHEDULES[config["beta_schedule"]]
    options = {}
    if name != "cosine":
        scale = _linear_scale(T) if name == "linear" else 1.0
        options = {"beta_start": config["beta_start"] / scale, "beta_end": config["beta_end"] / scale}
    return {"T": T, "schedule": name, "schedule_options": options,
            "prediction": PREDICTION_TYPES[config["prediction_type"]], "clip_x0": bool(config["clip_sample"])}


def schedule_to_diffusers(hparams, class_name="DDPMScheduler"):
    """The DDPMScheduler (or DDIMScheduler) config of a DDPM's hparams; a schedule diffusers lacks is refused."""
    name, T = hparams["schedule"], hparams["T"]
    options = {k: p.default for k, p in list(inspect.signature(SCHEDULES[name]).parameters.items())[1:]}
    options.update(hparams.get("schedule_options") or {})
    names = {v: k for k, v in BETA_SCHEDULES.items()}
    if name not in names or (name == "cosine" and options != {"s": 0.008, "max_beta": 0.999}):
        raise ValueError(f"schedule {name!r} with {options} has no diffusers beta_schedule (diffusers has "
                         f"{sorted(BETA_SCHEDULES)}; the cosine one only at s=0.008, max_beta=0.999)")
    config = {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION, "num_train_timesteps": T,
              "beta_schedule": names[name], "trained_betas": None, "clip_sample": bool(hparams.get("clip_x0", True)),
              "clip_sample_range": 1.0, "prediction_type": {v: k for k, v in PREDICTION_TYPES.items()}[
                  hparams.get("prediction", "eps")]}
    if name != "cosine":
        scale = _linear_scale(T) if name == "linear" else 1.0
        config.update(beta_start=options["beta_start"] * scale, beta_end=options["beta_end"] * scale)
    if class_name == "DDPMScheduler":
        config["variance_type"] = "fixed_small"
    else:
        config.update(set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    return config


def ddim_timesteps(config, K):
    """minidiff's kept steps (1-based, for ddim_sample(steps=...)) of DDIMScheduler.set_timesteps(K) on `config`.

    diffusers steps from t_d to t_d - T // K, ending at alpha_bar = 1 (set_alpha_to_one); that is minidiff's
    DDIM on the respaced chain of the kept steps when they are evenly T // K apart and the first lies below T // K.
    """
    config = {**SCHEDULER_DEFAULTS, "timestep_spacing": "leading", "steps_offset": 0, **config}
    T, spacing = int(config["num_train_timesteps"]), config["timestep_spacing"]
    ratio = T // K
    if spacing == "leading":
        t_d = np.arange(K) * ratio + int(config["steps_offset"])
    elif spacing == "trailing":
        t_d = np.round(np.arange(T, 0, -T / K)).astype(np.int64)[::-1] - 1
    else:
        _refuse("DDIMScheduler config", "timestep_spacing", spacing, ("leading", "trailing"))
    if not (np.all(np.diff(t_d) == ratio) and t_d[0] < ratio and t_d[-1] < T):
        raise ValueError(f"DDIMScheduler with {K} steps of {T} visits {t_d[::-1].tolist()}, not a chain of "
                         f"steps {ratio} apart ending at 0: minidiff's DDIM cannot follow it")
    return minidiff_timestep(t_d)


# ---------------------------------------------------------------- whole pipelines

def import_pipeline(folder, dtype=None):
    """A minidiff DDPM from a DDPMPipeline folder (unet/ + scheduler/) or a bare UNet2DModel folder.

    A bare U-Net gets DDPMScheduler's defaults (linear 1e-4..0.02, T = 1000, epsilon, clip_sample).
    """
    unet_dir = os.path.join(folder, "unet") if os.path.isdir(os.path.join(folder, "unet")) else folder
    scheduler_path = os.path.join(folder, "scheduler", "scheduler_config.json")
    scheduler = _read_json(scheduler_path) if os.path.isfile(scheduler_path) else {}
    unet, config = load_unet(unet_dir, dtype)
    if config["out_channels"] != config["in_channels"]:
        raise ValueError(f"{unet_dir}/config.json: out_channels={config['out_channels']} != in_channels="
                         f"{config['in_channels']}: a U-Net with a learned variance is not supported")
    size = config["sample_size"]
    size = size if isinstance(size, int) else size[0]
    model = DDPM(image_shape=(config["in_channels"], size, size), unet="diffusers", unet_config=config,
                 dropout=config["dropout"], **schedule_from_diffusers(scheduler), dtype=dtype)
    model.unet.load_state_dict(unet.state_dict())
    return model


def export_pipeline(model, folder):
    """Write a DDPMPipeline folder (DDPMPipeline.from_pretrained opens it) for a DDPM with a diffusers-layout U-Net."""
    if model.hparams.get("unet") != "diffusers":
        raise ValueError("only a DDPM with unet='diffusers' exports to diffusers (train it with --set unet=diffusers); "
                         "the teaching U-Net's layout is not UNet2DModel's: export it to PyTorch with "
                         "minidiff.interop.torch_unet instead")
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    save_unet(model.unet, model.unet.config, os.path.join(folder, "unet"))
    _write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), schedule_to_diffusers(model.hparams))
    _write_json(os.path.join(folder, "model_index.json"),
                {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
                 "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]})
    return folder


def _read_json(path):
    if not os.path.isfile(path):
        raise checkpoint.CheckpointError(f"{path} does not exist")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path, obj):
    checkpoint.atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


__all__ = ["unet_state_to_diffusers", "unet_state_from_diffusers", "unet_config", "load_unet", "save_unet",
           "schedule_from_diffusers", "schedule_to_diffusers", "ddim_timesteps", "import_pipeline", "export_pipeline",
           "UNSUPPORTED", "SCHEDULER_REFUSED"]
