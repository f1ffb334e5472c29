"""The local app: protect photos in a browser page, and see what an editor does to them before and after.

    decontext app                 # http://127.0.0.1:7860, the embedded toy editor on the CPU
    decontext app --model black-forest-labs/FLUX.1-Kontext-dev --device cuda

A Gradio page served on this machine only (127.0.0.1) unless asked otherwise, with Gradio's analytics off.
Photos dropped on it are copied into a session folder the page names (``runs/app/<time>/``), protected
there with ``decontext.protect.protect_files`` (the CLI's loop: exact budget on the saved file, bad files
named while the others finish, a manifest), one photo at a time so Cancel stops between photos and
nothing finished is lost when the page closes. For each photo it shows the protected photo, the
perturbation amplified, and an edit of the original next to the same edit of the protected photo, with
the identity score of the edits where it can read one (the toy's attribute reader on toy faces). The
originals are never modified and nothing leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

MODES = {  # the protection choices on the page -> what they run
    "instant (trained protector)": {"method": "amortized"},
    "fast (fewer PGD steps)": {"preset": "fast"},
    "paper (the official 800 steps)": {"preset": "paper"},
}
SHIPPED_PROTECTORS = {
    ("flux_kontext", "toy"): "toy-decontext"
}  # (family, model) -> the protector that makes "instant" possible
AMPLIFY = 10.0


@dataclass
class Session:
    """One page visit's folder and what was made in it."""

    folder: Path
    results: list[dict] = field(default_factory=list)


class ProtectApp:
    """The page's logic, without the page (tested directly, and driven by the Gradio callbacks)."""

    def __init__(
        self,
        model: str = "toy",
        family: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        out: str | Path = "runs/app",
    ):
        from .editors import family as family_of
        from .editors import family_of_model

        self.model, self.device, self.dtype = model, device, dtype
        self.family = family_of(family or family_of_model(model) or "flux_kontext").name
        self.out = Path(out)
        self._editors: dict = {}

    # ------------------------------------------------------------------ setup
    def editor(self):
        key = (self.model, self.family)
        if key not in self._editors:
            from .editors import load_editor

            self._editors[key] = load_editor(self.model, self.family, self.device, self.dtype)
        return self._editors[key]

    def protector(self) -> str | None:
        return SHIPPED_PROTECTORS.get((self.family, self.model))

    def prompts(self) -> list[str]:
        from .prompts import load_prompts
        from .toy.names import is_toy_model, toy_prompts

        pool = (
            load_prompts(toy_prompts(self.model, self.family))
            if is_toy_model(self.model, self.family)
            else load_prompts()
        )
        return list(dict.fromkeys(p.text for p in pool))

    def new_session(self) -> Session:
        folder = self.out / time.strftime("%Y%m%d-%H%M%S")
        k = 1
        while folder.exists():
            folder = self.out / f"{time.strftime('%Y%m%d-%H%M%S')}-{k}"
            k += 1
        (folder / "input").mkdir(parents=True)
        return Session(folder)

    # ------------------------------------------------------------------ work
    def protect_one(
        self, session: Session, upload: str | Path, mode: str, eps: float, prompt: str, seed: int = 0
    ) -> dict:
        """Protect one uploaded file into the session; returns what the page shows (or the problem)."""
        from .config import PGDConfig, ProtectConfig
        from .methods import build_method
        from .protect import protect_files

        upload = Path(upload)
        name = _safe_name(upload.name)
        source = session.folder / "input" / name
        shutil.copyfile(upload, source)  # the page's copy; the user's original is never touched
        try:
            from PIL import Image

            with Image.open(source) as opened:
                width, height = opened.size
            if min(width, height) < MIN_SIDE:
                return {
                    "name": name,
                    "error": f"{width}x{height} px is too small to protect (at least {MIN_SIDE} px a side)",
                }
        except OSError:
            pass  # not an image: the library call below names the problem
        choice = MODES[mode]
        editor = self.editor()
        if choice.get("method") == "amortized":
            protector = self.protector()
            if protector is None:
                return {
                    "name": name,
                    "error": f"no trained protector for {self.model} ({self.family}); choose fast or paper",
                }
            method = build_method("amortized", protector=protector)
            pgd = PGDConfig.for_method(method, eps=max(eps, 0.0) or None)
        else:
            method = build_method(
                "decontext", **({"prompts": self.prompts()} if _is_toy(self.model, self.family) else {})
            )
            from .editors import family as family_of

            pgd = PGDConfig.for_method(
                method,
                defaults=family_of(self.family).pgd_defaults,
                family_presets=family_of(self.family).presets,
                preset=choice["preset"],
                eps=eps,
            )
        report = protect_files(
            editor,
            method,
            source,
            session.folder / "protected",
            ProtectConfig(pgd=pgd, resolution=editor.default_resolution),
            seed=seed,
            log=lambda *a, **k: None,
            progress=True,
        )
        if report.failed:
            return {"name": name, "error": next(iter(report.failed.values()))}
        return self._result(
            session, name, source, session.folder / "protected" / f"{Path(name).stem}.png", prompt, seed, pgd.eps
        )

    def _result(
        self, session: Session, name: str, source: Path, protected: Path, prompt: str, seed: int, eps: float
    ) -> dict:
        from PIL import Image

        from .metrics.pixel import psnr

        original = np.asarray(Image.open(source).convert("RGB"))
        saved = np.asarray(Image.open(protected).convert("RGB"))
        diff = saved.astype(np.int16) - original.astype(np.int16)
        amplified = np.clip(128 + AMPLIFY * diff, 0, 255).astype(np.uint8)
        previews = session.folder / "previews"
        previews.mkdir(exist_ok=True)
        stem = Path(name).stem
        Image.fromarray(amplified).save(previews / f"{stem}_perturbation.png")
        edits = self.edit_pair(original, saved, prompt, seed)
        Image.fromarray(edits["original"]).save(previews / f"{stem}_edit_original.png")
        Image.fromarray(edits["protected"]).save(previews / f"{stem}_edit_protected.png")
        result = {
            "name": name,
            "protected": str(protected),
            "perturbation": str(previews / f"{stem}_perturbation.png"),
            "edit_original": str(previews / f"{stem}_edit_original.png"),
            "edit_protected": str(previews / f"{stem}_edit_protected.png"),
            "max_diff": int(np.abs(diff).max()),
            "psnr": float(psnr(original, saved)),
            "eps": eps,
            "identity": edits["identity"],
        }
        session.results.append(result)
        return result

    def edit_pair(self, original: np.ndarray, protected: np.ndarray, prompt: str, seed: int) -> dict:
        """The same edit of the original and of the protected photo, and the identity the toy reader still
        finds in each (None where no reader applies)."""
        from PIL import Image

        editor = self.editor()
        recommended = editor.recommended
        out = {}
        for key, picture in (("original", original), ("protected", protected)):
            (edited,) = editor.edit(
                [Image.fromarray(picture)],
                [prompt],
                [seed],
                steps=int(recommended["num_inference_steps"]),
                guidance=float(recommended["guidance_scale"]),
                resolution=editor.default_resolution,
            )
            out[key] = np.asarray(edited.convert("RGB").resize((picture.shape[1], picture.shape[0])))
        out["identity"] = self.identity(original, out) if _is_toy(self.model, self.family) else None
        return out

    @staticmethod
    def identity(source: np.ndarray, edits: dict) -> dict | None:
        """Toy identity (0-1) of each edit against the source: how much of the person the toy reader finds."""
        from .toy import world
        from .toy.reader import ToyReader

        if source.shape[:2] != (64, 64):
            return None  # the reader reads the toy world's 64 px faces, nothing else
        reader = ToyReader.load()
        src = reader.read([source])
        scores = {}
        for key in ("original", "protected"):
            reads = reader.read([edits[key]])
            scores[key] = float(np.mean([int(src[a][0]) == int(reads[a][0]) for a in world.ATTRIBUTES]))
        return scores

    def archive(self, session: Session) -> Path:
        """A zip of the protected PNGs and the manifest."""
        target = session.folder / "protected.zip"
        with zipfile.ZipFile(target, "w") as archive:
            for path in sorted((session.folder / "protected").glob("*")):
                if path.suffix in (".png", ".json"):
                    archive.write(path, path.name)
        return target


MIN_SIDE = 16  # smaller uploads are refused with a message (a 1x1 image holds nothing to protect)


def _is_toy(model: str, family: str) -> bool:
    from .toy.names import is_toy_model

    return is_toy_model(model, family)


def _safe_name(name: str) -> str:
    """An upload's file name as a plain, harmless file name."""
    keep = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name).lstrip(".") or "photo"
    return keep[:120]


def expected_psnr(eps: float) -> float:
    """PSNR of a perturbation that moves every pixel by eps/255 (the worst case of the L-inf budget)."""
    return 20 * np.log10(255.0 / max(eps, 1e-9))


# ---------------------------------------------------------------------------------------------- the page
def build_page(app: ProtectApp):
    import gradio as gr

    prompts = app.prompts()
    modes = list(MODES) if app.protector() else list(MODES)[1:]
    with gr.Blocks(analytics_enabled=False, title="decontext: protect a photo") as page:
        gr.Markdown(
            "## Protect a photo from in-context editing\n"
            "Drop photos, choose a strength, protect. Everything runs on this machine; "
            f"results are written to `{app.out}` (each visit gets its own folder). "
            f"Editor: **{app.model}** ({app.family})."
        )
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="photos", file_count="multiple", file_types=["image"], elem_id="photos")
                mode = gr.Radio(modes, value=modes[0], label="protection", elem_id="mode")
                eps = gr.Slider(1, 32, value=16, step=0.25, label="strength (L-inf budget, /255)", elem_id="eps")
                psnr_note = gr.Markdown(
                    f"worst-case PSNR at this strength: {expected_psnr(16):.1f} dB", elem_id="psnr-note"
                )
                prompt = gr.Dropdown(
                    prompts,
                    value=prompts[0] if prompts else None,
                    allow_custom_value=True,
                    label="edit to preview",
                    elem_id="prompt",
                )
                with gr.Row():
                    run = gr.Button("Protect", variant="primary", elem_id="protect")
                    cancel = gr.Button("Cancel", elem_id="cancel")
            with gr.Column(scale=2):
                status = gr.Markdown("", elem_id="status")
                protected = gr.Gallery(label="protected", columns=4, elem_id="protected")
                perturbation = gr.Gallery(
                    label=f"perturbation x{AMPLIFY:g} (grey = unchanged)", columns=4, elem_id="perturbation"
                )
                edits = gr.Gallery(
                    label="the edit: of the original | of the protected photo", columns=4, elem_id="edits"
                )
                download = gr.File(label="download", file_count="multiple", elem_id="download")
        eps.change(lambda e: f"worst-case PSNR at this strength: {expected_psnr(e):.1f} dB", eps, psnr_note)

        # gradio injects the progress tracker through this default argument
        def protect_all(uploads, chosen, strength, text, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
            uploads = [u if isinstance(u, str) else getattr(u, "name", str(u)) for u in (uploads or [])]
            if not uploads:
                yield "Add one or more photos first.", [], [], [], None
                return
            session = app.new_session()
            problems, shown_protected, shown_perturbation, shown_edits = [], [], [], []
            for k, upload in enumerate(uploads):
                progress((k, len(uploads)), desc=f"photo {k + 1} of {len(uploads)}")
                try:
                    result = app.protect_one(session, upload, chosen, float(strength), text or prompts[0])
                except Exception as exc:  # one bad photo never ends the batch
                    result = {"name": Path(upload).name, "error": f"{type(exc).__name__}: {exc}"}
                if "error" in result:
                    problems.append(f"- **{result['name']}**: {result['error']}")
                else:
                    shown_protected.append(
                        (
                            result["protected"],
                            f"{result['name']}: PSNR {result['psnr']:.1f} dB, max {result['max_diff']} levels",
                        )
                    )
                    shown_perturbation.append((result["perturbation"], result["name"]))
                    ident = result["identity"]
                    shown_edits += [
                        (
                            result["edit_original"],
                            "original" + (f": identity {ident['original']:.2f}" if ident else ""),
                        ),
                        (
                            result["edit_protected"],
                            "protected" + (f": identity {ident['protected']:.2f}" if ident else ""),
                        ),
                    ]
                done = len(session.results)
                text_status = (
                    f"{done} of {len(uploads)} protected, {len(problems)} failed; folder `{session.folder}`"
                    + ("\n\n" + "\n".join(problems) if problems else "")
                )
                files_out = [r["protected"] for r in session.results] + (
                    [str(app.archive(session))] if session.results else []
                )
                yield text_status, shown_protected, shown_perturbation, shown_edits, files_out or None

        event = run.click(protect_all, [files, mode, eps, prompt], [status, protected, perturbation, edits, download])
        cancel.click(
            lambda: "Cancelled: the photos finished so far are in the session folder.", None, status, cancels=[event]
        )
    return page


def serve(app: ProtectApp, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True):
    page = build_page(app)
    page.queue()
    return page.launch(
        server_name=host, server_port=port, share=share, inbrowser=False, prevent_thread_lock=not block, show_error=True
    )
