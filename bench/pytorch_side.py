#!/usr/bin/env python3
"""The PyTorch side of vdm's benchmark harness (`cargo run --release --example bench`).

The harness owns the cases: it runs this script once per case and round, in a fresh process, with
the case as JSON, and reads one line back:

    python bench/pytorch_side.py '{"kind": "unet3d", "config": {...}, "sample": [1,4,16,32,32], ...}'
    RESULT {"times": [...], "gflop": 255.9, "peak_rss_mib": 1365.2, "threads": 2, ...}

`times` are the wall seconds of the timed repetitions (after `warmup` untimed ones), `gflop` the
work of one repetition as torch's FlopCounterMode counts it (matmuls, convolutions and SDPA at two
FLOP per multiply-add; `null` where nothing is counted), `peak_rss_mib` the process's peak
resident memory (VmHWM). Models are built from the configs the harness sends (the diffusers /
transformers config fields), with seeded weights: nothing is downloaded. What each kind runs is
what the diffusers pipelines run for that piece (diffusers 0.42.1, transformers 5.25.0, torch
2.15.0; `bench/setup_python.sh` installs them from PyPI):

- unet3d:       UNet3DConditionModel(**config)(sample, 500, encoder_hidden_states=text)
- motion:       UNetMotionModel.from_unet2d(UNet2DConditionModel, MotionAdapter), optionally with
                AnimateDiffFreeNoiseMixin.enable_free_noise (the pipeline's own code), text repeated
                per frame as AnimateDiffPipeline passes it
- freeinit:     FreeInitMixin._get_free_init_freq_filter (butterworth, order 4, 0.25 / 0.25) and
                _apply_freq_filter: the work of one FreeInit re-initialisation
- sched:        DDIMScheduler(**config): set_timesteps(steps), then `steps` step() calls with a
                fixed model output
- vae_decode:   AutoencoderKL(**config).decode(latents / scaling_factor) of every frame at once
- text_encoder: transformers CLIPTextModel(CLIPTextConfig(**config))(ids).last_hidden_state
- cfg_step:     one denoising step of TextToVideoSDPipeline with classifier-free guidance: the
                UNet3D on the doubled batch, the guidance mix, DDIMScheduler.step
- gemm:         torch.mm of two n×n fp32 matrices (the machine's practical matmul rate)
"""

import json
import resource
import sys
import time


def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reinit_(model, seed, std=0.05):
    """Seeded normal weights (norm scales around 1), as the project's oracle generators do."""
    import torch
    gen = torch.Generator(device="cpu").manual_seed(seed)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    scales = {f"{n}.weight" if n else "weight" for n, m in model.named_modules()
              if isinstance(m, norms) and getattr(m, "weight", None) is not None}
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
            p.copy_(1.0 + noise if name in scales else noise)


def randn(shape, seed):
    import torch
    return torch.randn(shape, generator=torch.Generator(device="cpu").manual_seed(seed), dtype=torch.float32)


def count_gflop(fn):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def build(case):
    """The callable one repetition runs, and whether FLOPs are counted for it."""
    import torch
    import diffusers
    kind = case["kind"]
    if kind == "unet3d":
        m = diffusers.UNet3DConditionModel(**case["config"]).eval()
        reinit_(m, 7000)
        x, text = randn(case["sample"], 7100), randn(case["text"], 7101)
        return (lambda: m(x, 500, encoder_hidden_states=text).sample), True
    if kind == "motion":
        from diffusers.pipelines.free_noise_utils import AnimateDiffFreeNoiseMixin
        import types
        u2 = diffusers.UNet2DConditionModel(**case["unet2d"])
        adapter = diffusers.MotionAdapter(**case["motion_adapter"])
        reinit_(u2, 8000)
        reinit_(adapter, 8001)
        m = diffusers.UNetMotionModel.from_unet2d(u2, adapter).eval()
        if case.get("freenoise"):
            class Host(AnimateDiffFreeNoiseMixin):
                pass
            host = Host()
            host.unet = m
            host.motion_adapter = types.SimpleNamespace(config=adapter.config)
            host.device, host.dtype = torch.device("cpu"), torch.float32
            host.enable_free_noise(**case["freenoise"])
        x = randn(case["sample"], 8100)
        frames = case["sample"][2]
        text = randn(case["text"], 8101).repeat_interleave(frames, dim=0)
        return (lambda: m(x, 500, encoder_hidden_states=text).sample), True
    if kind == "freeinit":
        from diffusers.pipelines.free_init_utils import FreeInitMixin
        host = FreeInitMixin()
        shape = tuple(case["shape"])
        x, noise = randn(shape, 4000), randn(shape, 4100)
        kw = dict(filter_type="butterworth", order=4, spatial_stop_frequency=0.25, temporal_stop_frequency=0.25)

        def run():
            mask = host._get_free_init_freq_filter((1, *shape[1:]), "cpu", **kw)
            return host._apply_freq_filter(x, noise, mask)
        return run, False
    if kind == "sched":
        s = diffusers.DDIMScheduler(**case["config"])
        init, eps = randn(case["shape"], 1001), randn(case["shape"], 1002)

        def run():
            s.set_timesteps(case["steps"])
            sample = init
            for t in s.timesteps:
                sample = s.step(eps, t, sample, return_dict=False)[0]
            return sample
        return run, False
    if kind == "vae_decode":
        vae = diffusers.AutoencoderKL(**case["config"]).eval()
        reinit_(vae, 9000)
        z = randn(case["latents"], 9100)
        factor = vae.config.scaling_factor
        return (lambda: vae.decode(z / factor).sample), True
    if kind == "text_encoder":
        import transformers
        enc = transformers.CLIPTextModel(transformers.CLIPTextConfig(**case["config"])).eval()
        reinit_(enc, 9500)
        ids = torch.tensor([case["ids"]], dtype=torch.long)
        return (lambda: enc(ids).last_hidden_state), True
    if kind == "cfg_step":
        m = diffusers.UNet3DConditionModel(**case["config"]).eval()
        reinit_(m, 7000)
        s = diffusers.DDIMScheduler(**case["scheduler"])
        s.set_timesteps(case["steps"])
        t = s.timesteps[0]
        latents = randn(case["sample"], 7100)
        text = torch.cat([randn(case["text"], 7102), randn(case["text"], 7101)])  # [negative, prompt]
        g = case["guidance_scale"]

        def run():
            # TextToVideoSDPipeline.__call__, one iteration of its denoising loop
            model_in = s.scale_model_input(torch.cat([latents] * 2), t)
            noise_pred = m(model_in, t, encoder_hidden_states=text).sample
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + g * (cond - uncond)
            return s.step(noise_pred, t, latents, return_dict=False)[0]
        return run, True
    if kind == "gemm":
        n = case["n"]
        a, b = randn([n, n], 1), randn([n, n], 2)
        return (lambda: torch.mm(a, b)), True
    raise SystemExit(f"unknown case kind {kind!r}")


def main():
    case = json.loads(sys.argv[1])
    import torch
    import diffusers
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    with torch.no_grad():  # as the diffusers pipelines' __call__
        fn, counted = build(case)
        gflop = count_gflop(fn) if counted else None
        for _ in range(case.get("warmup", 1)):
            fn()
        times = []
        for _ in range(case.get("repeats", 5)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    print("RESULT " + json.dumps({
        "times": times, "gflop": gflop, "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
