#!/usr/bin/env python3
"""Train-step and sampling-step times of the peer, lucidrains' rin-pytorch, on CPU.

Run with the peer's own interpreter (the venv benchmarks/setup_peer.sh builds), not ours; this file
imports nothing from rin_diffusion. benchmarks/compare_peer.sh calls it at the config it matches to
ours; see there and in benchmarks/README.md for what that config is and what still differs.

It builds the package's public `rin_pytorch.RIN` inside `rin_pytorch.GaussianDiffusion` and
measures, with torch pinned to --threads intra-op threads:

  training   --warmup untimed, then --steps timed steps of what the package's Trainer does per
             batch without its data loading, EMA and accelerate: `loss = diffusion(images)` (which
             draws one self-conditioning coin per batch and, on heads, runs an extra no-grad forward
             first), backward, gradient-norm clipping at 1, Adam (betas 0.9, 0.99);
  sampling   one untimed sample of --sample-warmup-steps steps, then one timed `diffusion.sample` of
             --sample-steps steps (DDIM or DDPM, one model forward per step);
  size       parameter count, and the FLOPs of one sampling-style forward per image (torch's
             FlopCounterMode).

Every timed span also records the CPU time the process took in it, so a run on a busy machine shows
itself: a step counts as uncontended when the process got at least 90 % of --threads cores.

Prints one JSON line on stdout; progress goes to stderr.

    /tmp/peer/bin/python benchmarks/peer_rin_pytorch.py --threads 2 --steps 10 --sample-steps 10
"""

import argparse
import importlib.util
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
import types
import warnings
from importlib.metadata import PackageNotFoundError, version

os.environ.setdefault("TQDM_DISABLE", "1")  # the package's samplers wrap their loops in tqdm
# The package's Attend (with --flash) enters torch.backends.cuda.sdp_kernel, which torch deprecates.
warnings.filterwarnings("ignore", message=r".*sdp_kernel", category=FutureWarning)


def note(message):
    print(f"peer_rin_pytorch: {message}", file=sys.stderr, flush=True)


def flags(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("rin_pytorch.RIN")
    model.add_argument("--image-size", type=int, default=32)
    model.add_argument("--channels", type=int, default=3)
    model.add_argument("--patch-size", type=int, default=4)
    model.add_argument("--dim", type=int, default=256, help="interface (patch token) width")
    model.add_argument("--dim-latent", type=int, default=512)
    model.add_argument("--num-latents", type=int, default=64,
                       help="learned latents (the time token, if any, comes on top)")
    model.add_argument("--depth", type=int, default=2, help="RIN blocks")
    model.add_argument("--latent-depth", type=int, default=2,
                       help="latent self-attention layers per block (latent_self_attn_depth)")
    model.add_argument("--heads", type=int, default=8)
    model.add_argument("--dim-head", type=int, default=None,
                       help="width of every attention head; default dim_latent // heads")
    model.add_argument("--no-patches-self-attn", action="store_true",
                       help="drop the package's linear self-attention on the interface (the paper "
                            "has none)")
    model.add_argument("--latent-token-time-cond", action="store_true",
                       help="time as one extra latent token (as in the paper) instead of the "
                            "package's default adaptive norm scale and shift")
    model.add_argument("--flash", action="store_true",
                       help="attention through F.scaled_dot_product_attention")
    diffusion = parser.add_argument_group("rin_pytorch.GaussianDiffusion")
    diffusion.add_argument("--objective", choices=("v", "eps", "x0"), default="v")
    diffusion.add_argument("--noise-schedule", choices=("sigmoid", "cosine", "linear"),
                           default="sigmoid")
    diffusion.add_argument("--self-cond-prob", type=float, default=0.9,
                           help="train_prob_self_cond: the chance a training batch self-conditions")
    diffusion.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    bench = parser.add_argument_group("benchmark")
    bench.add_argument("--batch", type=int, default=16)
    bench.add_argument("--sample-batch", type=int, default=None, help="default --batch")
    bench.add_argument("--warmup", type=int, default=2, help="untimed training steps")
    bench.add_argument("--steps", type=int, default=10, help="timed training steps")
    bench.add_argument("--sample-warmup-steps", type=int, default=2,
                       help="steps of the untimed warm-up sample")
    bench.add_argument("--sample-steps", type=int, default=10, help="steps of the timed sample")
    bench.add_argument("--lr", type=float, default=1e-4)
    bench.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.sample_steps < 1:
        parser.error("--steps and --sample-steps must be at least 1")
    if args.flash and not args.no_patches_self_attn:
        # RIN hands its attention keywords to the interface's LinearAttention too, which has no
        # `flash` argument.
        parser.error("--flash needs --no-patches-self-attn")
    return args


def load_rin_pytorch():
    """`(RIN, GaussianDiffusion, placeholder)`: the package's classes, and whether torchvision
    had to be stood in for.

    rin_pytorch.rin_pytorch runs `from torchvision import transforms as T, utils` when imported but
    only its Dataset and Trainer touch either. When torchvision is not installed (setup_peer.sh
    leaves it out when no build of it loads beside this torch), an empty module of that name
    satisfies the import; the classes used here never reach it.
    """
    placeholder = importlib.util.find_spec("torchvision") is None
    if placeholder:
        torchvision = types.ModuleType("torchvision")
        for part in ("transforms", "utils"):
            submodule = types.ModuleType(f"torchvision.{part}")
            setattr(torchvision, part, submodule)
            sys.modules[submodule.__name__] = submodule
        sys.modules["torchvision"] = torchvision
    from rin_pytorch import RIN, GaussianDiffusion

    return RIN, GaussianDiffusion, placeholder


class Span:
    """Wall and process CPU seconds of a `with` block."""

    def __enter__(self):
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0

    @property
    def cores(self):
        return self.cpu / self.wall if self.wall > 0 else 0.0


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def median_or_none(values, digits=4):
    return round(statistics.median(values), digits) if values else None


def main(argv=None):
    args = flags(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)  # GaussianDiffusion draws its self-conditioning coin from `random`
    RIN, GaussianDiffusion, placeholder = load_rin_pytorch()

    dim_head = args.dim_head or args.dim_latent // args.heads
    sample_batch = args.sample_batch or args.batch
    attention = {"heads": args.heads, "dim_head": dim_head}
    if args.flash:
        attention["flash"] = True
    network = RIN(
        dim=args.dim, image_size=args.image_size, patch_size=args.patch_size,
        channels=args.channels, depth=args.depth, latent_self_attn_depth=args.latent_depth,
        dim_latent=args.dim_latent, num_latents=args.num_latents,
        latent_token_time_cond=args.latent_token_time_cond,
        patches_self_attn=not args.no_patches_self_attn, **attention)
    diffusion = GaussianDiffusion(
        network, timesteps=args.sample_steps, use_ddim=args.sampler == "ddim",
        noise_schedule=args.noise_schedule, objective=args.objective,
        train_prob_self_cond=args.self_cond_prob)
    params = sum(p.numel() for p in network.parameters())
    note(f"{params:,} parameters, {torch.get_num_threads()} threads, "
         f"torchvision placeholder: {placeholder}")

    # Every call of the network, in training and in sampling, goes through RIN.forward: count
    # them (two in a training step that self-conditioned) and time them.
    calls = []

    def before(_module, _inputs):
        calls.append(Span().__enter__())

    def after(_module, _inputs, _output):
        calls[-1].__exit__()

    hooks = [network.register_forward_pre_hook(before), network.register_forward_hook(after)]

    optimizer = torch.optim.Adam(diffusion.parameters(), lr=args.lr, betas=(0.9, 0.99))
    images = torch.rand(args.batch, args.channels, args.image_size, args.image_size)  # in [0, 1]

    def train_step():
        calls.clear()
        with Span() as span:
            loss = diffusion(images)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = loss.item()
        return span, len(calls) == 2, value

    diffusion.train()
    for i in range(args.warmup):
        span, self_cond, loss = train_step()
        note(f"warm-up step {i}: {span.wall:.3f} s, self-conditioned {self_cond}, loss {loss:.4f}")
    load_before = load_average()
    steps = []
    with Span() as timed:
        for i in range(args.steps):
            span, self_cond, loss = train_step()
            steps.append((span, self_cond, loss))
            note(f"step {i}: {span.wall:.3f} s on {span.cores:.2f} cores, "
                 f"self-conditioned {self_cond}, loss {loss:.4f}")
    quiet = 0.9 * args.threads
    step_s = [span.wall for span, _, _ in steps]
    step_s_median = statistics.median(step_s)
    quiet_s = [span.wall for span, _, _ in steps if span.cores >= quiet]
    with_sc = [span.wall for span, sc, _ in steps if sc]
    without_sc = [span.wall for span, sc, _ in steps if not sc]

    diffusion.eval()
    fwd_gflops = None
    if not args.no_flops:
        from torch.utils.flop_counter import FlopCounterMode

        # A sampling step's forward: noisy image, time, and both self-conditioning inputs.
        x = torch.randn(args.batch, args.channels, args.image_size, args.image_size)
        t = torch.rand(args.batch)
        with torch.no_grad():
            previous, latents = network(x, t, return_latents=True)
            counter = FlopCounterMode(display=False)
            with counter:
                network(x, t, previous.clamp(-1, 1), latents, return_latents=True)
        fwd_gflops = counter.get_total_flops() / args.batch / 1e9

    diffusion.timesteps = args.sample_warmup_steps
    diffusion.sample(batch_size=sample_batch)
    diffusion.timesteps = args.sample_steps
    calls.clear()
    with Span() as sampling:
        samples = diffusion.sample(batch_size=sample_batch)
    sample_calls = list(calls)
    for hook in hooks:
        hook.remove()
    if len(sample_calls) != args.sample_steps:
        sys.exit(f"expected {args.sample_steps} network calls in sampling, saw {len(sample_calls)}")
    if samples.shape != (sample_batch, args.channels, args.image_size, args.image_size):
        sys.exit(f"unexpected sample shape {tuple(samples.shape)}")
    if not torch.isfinite(samples).all():
        sys.exit("non-finite samples")
    note(f"{args.sample_steps}-step sample of {sample_batch}: {sampling.wall:.3f} s on "
         f"{sampling.cores:.2f} cores")

    def package(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    print(json.dumps({
        "impl": "rin-pytorch",
        "impl_version": package("rin-pytorch"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "torchvision_placeholder": placeholder,
        "config": {
            "image_size": args.image_size, "channels": args.channels,
            "patch_size": args.patch_size, "dim": args.dim, "dim_latent": args.dim_latent,
            "num_latents": args.num_latents, "depth": args.depth,
            "latent_depth": args.latent_depth, "heads": args.heads, "dim_head": dim_head,
            "patches_self_attn": not args.no_patches_self_attn,
            "latent_token_time_cond": args.latent_token_time_cond, "flash": args.flash,
            "objective": args.objective, "noise_schedule": args.noise_schedule,
            "self_cond_prob": args.self_cond_prob, "sampler": args.sampler,
            "batch": args.batch, "sample_batch": sample_batch, "warmup": args.warmup,
            "steps": args.steps, "sample_warmup_steps": args.sample_warmup_steps,
            "sample_steps": args.sample_steps,
            "optimizer": f"Adam(lr={args.lr}, betas=(0.9, 0.99)), grad-norm clip 1.0",
        },
        "params": params,
        "fwd_gflops_per_image": round(fwd_gflops, 4) if fwd_gflops is not None else None,
        # Training: the median over all timed steps, most of which self-condition.
        "train_step_s_median": round(step_s_median, 4),
        "train_step_s_min": round(min(step_s), 4),
        "train_step_s_median_selfcond": median_or_none(with_sc),
        "train_step_s_median_no_selfcond": median_or_none(without_sc),
        "train_steps_with_selfcond": len(with_sc),
        "train_images_per_s": round(args.batch / step_s_median, 3),
        # The same from the steps that had >= 90 % of --threads cores only (None if none did).
        "train_steps_uncontended": len(quiet_s),
        "train_images_per_s_uncontended": (
            round(args.batch / statistics.median(quiet_s), 3) if quiet_s else None),
        "train_loss_first_last": [round(steps[0][2], 4), round(steps[-1][2], 4)],
        # Process CPU seconds per wall second over the timed steps; ideally --threads.
        "train_cpu_util": round(timed.cores, 2),
        "loadavg_1m_before_timed": load_before,
        # Sampling: the timed sample's wall time per step, and the median network call in it.
        "sample_total_s": round(sampling.wall, 4),
        "sample_step_s": round(sampling.wall / args.sample_steps, 4),
        "sample_call_s_median": median_or_none([span.wall for span in sample_calls]),
        "sample_cpu_util": round(sampling.cores, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
