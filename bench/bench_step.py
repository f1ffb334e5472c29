#!/usr/bin/env python
"""Time and memory of ONE protection step (VAE encode + transformer + backward to pixels), three ways,
interleaved in one run:

  ours      decontext: the share rides in each probed layer's own attention call (indicator value
            channel), the last probed layer only measures it, and the forward stops there
  ours_sep  (--with-separate) ours with a separate indicator call in every probed layer
  official  the official code's way: forward hooks on norm_q/norm_k, RoPE re-applied by hand, full
            softmax of target queries over all keys kept for backward, every block run
  bare      the whole model forward+backward with no probe (what a step costs without skipping work)

The last line is machine-readable:
  ratios official_time=X official_mem=Y bare_time=Z     (ours divided by the other variant)

Examples:
  python -m bench.bench_step --size 1024 --text-tokens 128           # CPU targets of issue 6
  python -m bench.bench_step --size 512 --text-tokens 128
  python -m bench.bench_step --preset flux --size 1024 --device cuda --dtype bfloat16 --checkpointing
  python -m bench.bench_step --family flux2 --preset real --size 1024 --device cuda --dtype bfloat16 --checkpointing
  python -m bench.bench_step --family qwen_image_edit --preset real --size 1024 --device cuda --dtype bfloat16

--family flux2 / qwen_image_edit (FLUX.2 [dev], Qwen-Image-Edit): ours and bare only (the official code
exists for FLUX.1-Kontext alone); --preset tiny = the family's tiny test model, real = the real
transformer and VAE shapes with random weights (text encoders stay small: they run once per image).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from decontext.cli.common import avoid_cudnn_attention, quiet_libraries
from decontext.editors.flux_kontext import FluxKontextEditor
from decontext.editors.tiny import TinyKontextConfig
from decontext.methods.decontext import DeContext


def real_flux2_config(args):
    """FLUX.2 [dev]'s transformer and VAE shapes (diffusers' Flux2Transformer2DModel defaults: 8 double and
    48 parallel single blocks, 48 x 128 heads, text width 15360 = 3 stacked 5120-wide hidden states)."""
    from decontext.editors.flux2 import TinyFlux2Config

    return TinyFlux2Config(
        num_layers=8,
        num_single_layers=48,
        num_attention_heads=48,
        attention_head_dim=128,
        axes_dims_rope=(32, 32, 32, 32),
        timestep_guidance_channels=256,
        guidance_embeds=True,
        latent_channels=32,
        vae_channels=(128, 256, 512, 512),
        qwen_hidden=5120,
        qwen_layers=3,
        qwen_heads=40,
        qwen_kv_heads=8,
        max_text_tokens=args.text_tokens,
    )


def real_qwen_config(args):
    """Qwen-Image's transformer and VAE shapes (60 dual blocks, 24 x 128 heads, text width 3584)."""
    from decontext.editors.qwen_image_edit import TinyQwenImageEditConfig
    from decontext.editors.tiny import TinyStep1XConfig

    vlm = TinyStep1XConfig(
        qwen_hidden=3584,
        qwen_layers=1,
        qwen_heads=28,
        qwen_kv_heads=4,
        qwen_intermediate=4096,
        qwen_mrope_section=(16, 24, 24),
    )
    return TinyQwenImageEditConfig(
        num_layers=60,
        num_attention_heads=24,
        attention_head_dim=128,
        axes_dims_rope=(16, 56, 56),
        z_dim=16,
        vae_base_dim=96,
        vae_dim_mult=(1, 2, 4, 4),
        vae_res_blocks=2,
        vlm=vlm,
    )


@contextlib.contextmanager
def built_in_place(device: torch.device, dtype: torch.dtype):
    """On a GPU, draw the random weights there and in the benchmark's dtype: a 12-32 B model is then built in
    seconds instead of minutes on the CPU, and never held in float32 (a 20 B model would not fit).
    ``DECONTEXT_BENCH_BUILD_ON_CPU=1`` builds on the CPU and moves the model, as before (a diagnostic: it
    showed the cuDNN crash of docs/PERFORMANCE.md does not come from building in place)."""
    if device.type == "cpu" or os.environ.get("DECONTEXT_BENCH_BUILD_ON_CPU"):
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_other_family(args):
    """A FLUX.2 or Qwen-Image-Edit editor (tiny, or real shapes with random weights) on ``args.device``."""
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    with built_in_place(device, dtype):
        if args.family == "flux2":
            from decontext.editors.flux2 import Flux2Editor

            editor = Flux2Editor.tiny(
                real_flux2_config(args) if args.preset == "real" else None, seed=0, device=device, dtype=dtype
            )
        else:
            from decontext.editors.qwen_image_edit import QwenImageEditEditor

            editor = QwenImageEditEditor.tiny(
                real_qwen_config(args) if args.preset == "real" else None, seed=0, device=device, dtype=dtype
            )
    if args.checkpointing:
        editor.transformer.enable_gradient_checkpointing()
    return editor


def build_editor(args) -> FluxKontextEditor:
    if args.family != "flux_kontext":
        return build_other_family(args)
    if args.preset in ("flux", "real"):
        # The real FLUX.1-Kontext transformer and VAE architecture, random weights.
        config = TinyKontextConfig(
            num_layers=19,
            num_single_layers=38,
            num_attention_heads=24,
            attention_head_dim=128,
            axes_dims_rope=(16, 56, 56),
            text_dim=4096,
            pooled_dim=768,
            vae_channels=(128, 256, 512, 512),
            vae_layers_per_block=2,
            max_text_tokens=args.text_tokens,
        )
    else:
        head_dim = args.hidden // args.heads
        axes = (head_dim - 2 * (head_dim * 7 // 16), head_dim * 7 // 16, head_dim * 7 // 16)
        config = TinyKontextConfig(
            num_layers=args.double,
            num_single_layers=args.single,
            num_attention_heads=args.heads,
            attention_head_dim=head_dim,
            axes_dims_rope=axes,
            text_dim=64,
            pooled_dim=32,
            vae_channels=tuple(args.vae_channels),
            max_text_tokens=args.text_tokens,
        )
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    with built_in_place(device, dtype):
        editor = FluxKontextEditor.tiny(config, seed=0, device=device, dtype=dtype)
    if args.quantize:
        editor = quantized(editor, args)
    if args.checkpointing:
        editor.transformer.enable_gradient_checkpointing()
    return editor


def quantized(editor: FluxKontextEditor, args) -> FluxKontextEditor:
    """The same editor with its transformer loaded the way ``--quantize`` loads a real one: saved to a scratch
    folder (safetensors), then read back through ``from_pretrained`` with a bitsandbytes config."""
    from decontext.editors.flux_kontext import _load_quantized_transformer

    if editor.device.type != "cuda":
        raise SystemExit("--quantize needs --device cuda (bitsandbytes kernels)")
    pipe, device, dtype = editor.pipe, editor.device, editor.dtype
    with tempfile.TemporaryDirectory(prefix="bench_quant_", dir=args.scratch) as scratch:
        began = time.perf_counter()
        pipe.transformer.save_pretrained(Path(scratch) / "transformer")
        pipe.transformer = None  # free the bf16 copy before the quantised one is loaded
        gc.collect()
        torch.cuda.empty_cache()
        pipe.transformer = _load_quantized_transformer(scratch, args.quantize, dtype, device, local_files_only=True)
        print(
            f"quantized the transformer to {args.quantize} through a saved copy in {time.perf_counter() - began:.0f} s"
        )
    return FluxKontextEditor(
        pipe, name="tiny", device=device, dtype=dtype, max_sequence_length=editor.max_sequence_length
    )


def run_or_oom(fn) -> str | None:
    """Run ``fn``; on a CUDA out-of-memory error free what it held and return the error's first line."""
    try:
        fn()
        return None
    except torch.OutOfMemoryError as error:
        message = str(error).splitlines()[0][:160]
    gc.collect()
    torch.cuda.empty_cache()
    return message


class OfficialStyle:
    """The official code's probe: q/k captured by forward hooks on norm_q / norm_k (BEFORE RoPE), RoPE
    re-applied, the full (target x all keys) softmax materialised, and every block run."""

    def __init__(self, editor, blocks):
        self.editor, self.blocks = editor, blocks

    def shares(self, noise, condition, sigma):
        from diffusers.models.embeddings import apply_rotary_emb

        editor = self.editor
        captured, handles = {}, []
        for name in self.blocks:
            attn = editor.blocks[name].module.attn
            # The official hooks store a copy of each output.
            handles.append(
                attn.norm_q.register_forward_hook(
                    lambda m, i, o, n=name: captured.setdefault(n, {}).__setitem__("q", o.clone())
                )
            )
            handles.append(
                attn.norm_k.register_forward_hook(
                    lambda m, i, o, n=name: captured.setdefault(n, {}).__setitem__("k", o.clone())
                )
            )
        try:
            editor.velocity(noise, sigma, condition)
        finally:
            for handle in handles:
                handle.remove()
        layout = condition.layout
        ids = [
            torch.zeros(layout.text, 3, device=editor.device, dtype=editor.dtype),
            condition.extra["target_ids"],
            condition.extra["context_ids"],
        ]
        rope = editor.transformer.pos_embed(torch.cat(ids))
        shares = []
        for name in self.blocks:
            q = apply_rotary_emb(captured[name]["q"], rope, sequence_dim=1)
            k = apply_rotary_emb(captured[name]["k"], rope, sequence_dim=1)
            q_t = q[:, layout.target_slice].transpose(1, 2)
            scores = q_t @ k.transpose(1, 2).transpose(-1, -2) / q.shape[-1] ** 0.5
            probs = scores.float().softmax(-1)
            shares.append(probs[..., layout.context_slice].sum(-1).mean())
        return torch.stack(shares).mean()


def make_steps(editor, args):
    prompt = "make the person smile"
    method = DeContext(prompts=[prompt], release_text_encoders=True)
    method.ready(editor)
    blocks = method._blocks
    official = OfficialStyle(editor, blocks)
    size = (args.size, args.size)
    x0 = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(editor.device)
    sigma = torch.tensor([0.99])

    def draw():
        return torch.Generator().manual_seed(1)

    def ours(fused: bool = True, on=editor):
        with method.session(on) as probe:
            probe.fused = fused  # False: a separate indicator call in every probed layer (no fusion)
            x = x0.clone().requires_grad_(True)
            loss, _ = method.loss(on, x, size, 0, [draw()])
            loss.backward()
        return float(loss.detach())

    def unprobed(loss_of):
        """A step of a variant that does not use our probe: condition, draw the same noise, loss, backward."""
        x = x0.clone().requires_grad_(True)
        condition = editor.condition(x, [prompt], size)
        noise = editor.noise_like(condition, [draw()])
        loss = loss_of(noise, condition)
        loss.backward()
        return float(loss.detach())

    def official_step():
        if not args.official_checkpointing:
            return unprobed(lambda noise, condition: 1 - official.shares(noise, condition, sigma))
        # As the official script runs: gradient checkpointing in the transformer AND the VAE.
        editor.transformer.enable_gradient_checkpointing()
        editor.vae.enable_gradient_checkpointing()
        try:
            return unprobed(lambda noise, condition: 1 - official.shares(noise, condition, sigma))
        finally:
            if not args.checkpointing:  # leave ours as it was configured
                editor.transformer.disable_gradient_checkpointing()
            editor.vae.disable_gradient_checkpointing()

    def bare():
        return unprobed(lambda noise, condition: editor.velocity(noise, sigma, condition).float().pow(2).mean())

    extra = {}
    if args.compile:  # a compiled copy beside the eager one, so both are timed side by side
        import copy

        compiled = copy.deepcopy(editor)
        compiled.compile_blocks()
        method.ready(compiled)
        began = time.perf_counter()
        eager_loss, compiled_loss = ours(), ours(on=compiled)
        print(
            f"compile: {sum(compiled.depths.values())} blocks compiled, "
            f"first compiled step {time.perf_counter() - began:.1f} s "
            f"(compiling); loss eager {eager_loss:.7f} vs compiled {compiled_loss:.7f} "
            f"(diff {abs(eager_loss - compiled_loss):.2e})"
        )
        extra["ours_compiled"] = lambda: ours(on=compiled)
    if args.family != "flux_kontext":  # no official implementation to compare with
        return {"ours": ours, "bare": bare, **extra}
    steps = {"ours": ours, "official": official_step, "bare": bare, **extra}
    if args.with_separate:
        steps["ours_sep"] = lambda: ours(fused=False)
    return steps


def peak_memory_mb(fn, device) -> float:
    """Peak extra memory of one call: the CUDA allocator's peak, or on CPU the growth of the peak RSS."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        if run_or_oom(fn) is not None:
            return float("inf")
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # Linux: writing 5 to clear_refs resets the peak-RSS mark (VmHWM), so building the model does not count.
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    start = _status_mb("VmRSS")
    fn()
    return _status_mb("VmHWM") - start


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_in_subprocess(variant: str, argv: list[str]) -> float:
    """CPU peak RSS is a per-process high-water mark, so each variant is measured in a fresh process
    (same arguments, ``--memory-of VARIANT``) that builds the model, then runs one step."""
    command = [sys.executable, "-m", "bench.bench_step", *argv, "--memory-of", variant]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    for line in result.stdout.splitlines():
        if line.startswith("peak_mb="):
            return float(line.split("=", 1)[1])
    print(f"warning: memory measurement of {variant} failed: {result.stderr[-500:]}", file=sys.stderr)
    return float("nan")


def timed(fn, device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def snapshot_memory(steps: dict, names: list[str], folder: Path) -> None:
    """One step of each variant under the CUDA allocator's history recorder: a snapshot file per variant and,
    printed, the peak and the largest blocks live at the end of the step's forward+backward (what the
    checkpointed memory excess is made of, issue 31 item 5)."""
    import pickle

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.memory._record_memory_history(max_entries=200000)
        try:
            steps[name]()
            torch.cuda.synchronize()
            snapshot = torch.cuda.memory._snapshot()
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)
        with open(folder / f"{name}.pickle", "wb") as handle:
            pickle.dump(snapshot, handle)
        sizes = sorted(
            (b["size"] for seg in snapshot["segments"] for b in seg["blocks"] if b["state"] == "active_allocated"),
            reverse=True,
        )
        stats = torch.cuda.memory_stats()
        print(
            f"memory {name}: peak allocated {stats['allocated_bytes.all.peak'] / 2**30:.2f} GiB, peak reserved "
            f"{stats['reserved_bytes.all.peak'] / 2**30:.2f} GiB, largest live blocks (MiB): "
            f"{[round(x / 2**20) for x in sizes[:12]]}"
        )


VARIANTS = ("ours", "official", "bare", "ours_sep", "ours_compiled")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--family",
        choices=["flux_kontext", "flux2", "qwen_image_edit"],
        default="flux_kontext",
        help="the editor architecture",
    )
    parser.add_argument(
        "--preset",
        choices=["tiny", "flux", "real"],
        default="tiny",
        help="tiny: sizes below (other families: their tiny test model); "
        "flux or real: the family's real architecture, random weights",
    )
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument(
        "--heads", type=int, default=4, help="attention heads (head dim = hidden / heads; FLUX: 24 x 128)"
    )
    parser.add_argument("--double", type=int, default=2)
    parser.add_argument("--single", type=int, default=4)
    parser.add_argument("--vae-channels", type=int, nargs=4, default=[8, 8, 16, 16])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the transformer")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--official-checkpointing",
        action="store_true",
        help="run the official variant with transformer+VAE gradient checkpointing, as the official script does",
    )
    parser.add_argument(
        "--with-separate",
        action="store_true",
        help="also time ours with a separate probe call in every probed layer (no fusion)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        help="run only these variants, warmed up in this order (default: all that apply)",
    )
    parser.add_argument(
        "--quantize",
        choices=["8bit", "4bit"],
        help="FLUX.1-Kontext on CUDA: the transformer weight-quantised with bitsandbytes, "
        "loaded as --quantize loads it",
    )
    parser.add_argument(
        "--memory-cap-gb",
        type=float,
        help="CUDA: cap this process's GPU memory (torch's per-process fraction) after the model is built, "
        "to show what fits a smaller card; a variant that does not fit is reported as OOM",
    )
    parser.add_argument(
        "--scratch",
        default=None,
        help="folder for --quantize's temporary saved copy (default: the system's temp folder)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time ours on a copy of the model with every block torch.compiled (--compile of the attacks)",
    )
    parser.add_argument(
        "--memory-snapshot",
        type=Path,
        default=None,
        help="CUDA: record the allocator's history during one step of each variant and save a snapshot per variant "
        "here (FOLDER/<variant>.pickle, for torch.cuda.memory's viewer), "
        "with the 12 largest live blocks at the peak printed",
    )
    parser.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    quiet_libraries()
    cudnn_off = avoid_cudnn_attention()  # as the attacks do (decontext.cli)
    torch.manual_seed(0)
    if args.quantize and args.family != "flux_kontext":
        parser.error("--quantize is measured for --family flux_kontext")
    if args.memory_cap_gb and not args.device.startswith("cuda"):
        parser.error("--memory-cap-gb needs a CUDA device")
    editor = build_editor(args)
    device = editor.device
    steps = make_steps(editor, args)
    if args.memory_of:
        print(f"peak_mb={peak_memory_mb(steps[args.memory_of], device)}")
        return 0
    names = list(steps)
    if args.variants:
        unknown = [name for name in args.variants if name not in steps]
        if unknown:
            parser.error(f"variants {unknown} do not apply here (available: {names}; ours_sep needs --with-separate)")
        names = list(args.variants)
    print(
        f"device={device} dtype={args.dtype} preset={args.preset} size={args.size} text_tokens={args.text_tokens} "
        f"official_checkpointing={args.official_checkpointing} "
        f"checkpointing={args.checkpointing} quantize={args.quantize} blocks={editor.depths} "
        f"probed={len(editor.resolve_blocks('single:0-25/38'))} "
        f"threads={torch.get_num_threads()} cudnn_sdpa={'off' if cudnn_off else 'allowed'}"
    )
    resident = 0.0
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        resident = torch.cuda.memory_allocated() / 2**20
        total = torch.cuda.get_device_properties(device).total_memory
        print(
            f"gpu={torch.cuda.get_device_name(device)} resident_MB={resident:.0f} (weights and buffers before a step)"
        )
        if args.memory_cap_gb:
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, args.memory_cap_gb * 2**30 / total),
                torch.cuda.current_device() if device.index is None else device.index,
            )
            print(f"memory cap: {args.memory_cap_gb:g} GiB for everything this process allocates")
    failed = {}
    for name in names:  # warm-up (and a check that every variant runs; on a GPU one may not fit)
        error = run_or_oom(steps[name])
        if error is not None:
            failed[name] = error
            print(f"{name}: out of GPU memory ({error})")
    names = [name for name in names if name not in failed]
    times = {name: [] for name in names}
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]  # rotate to spread drift
        for name in order:
            times[name].append(timed(steps[name], device))
    if args.memory_snapshot is not None and device.type == "cuda":
        snapshot_memory(steps, names, args.memory_snapshot)
    memory = {name: float("nan") for name in names}
    if not args.skip_memory:
        for name in names:
            memory[name] = (
                peak_memory_mb(steps[name], device) if device.type == "cuda" else memory_in_subprocess(name, argv)
            )
    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{'variant':<10}{'median s':>10}{'min s':>9}{'max s':>9}{'peak MB':>10}"
        + (f"{'total MB':>10}" if device.type == "cuda" else "")
    )
    for name in names:
        total_column = f"{resident + memory[name]:>10.0f}" if device.type == "cuda" else ""
        print(
            f"{name:<10}{median[name]:>10.3f}{min(times[name]):>9.3f}{max(times[name]):>9.3f}{memory[name]:>10.0f}{total_column}"
        )
    for name in failed:
        print(f"{name:<10}{'OOM':>10}")
    if "ours" not in median:
        print("ratios: not computed (ours did not run)")
        return 0
    ratios = []
    if "official" in median:
        ratios += [
            f"official_time={median['ours'] / median['official']:.3f}",
            f"official_mem={memory['ours'] / memory['official']:.3f}",
        ]
    if "bare" in median:
        ratios.append(f"bare_time={median['ours'] / median['bare']:.3f}")
        if "official" not in steps:  # other families: memory against bare instead
            ratios.append(f"bare_mem={memory['ours'] / memory['bare']:.3f}")
    missing = [name for name in ("official", "bare") if name in steps and name not in median]
    print("ratios " + " ".join(ratios) + (f"   (not run or did not fit: {', '.join(missing)})" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
