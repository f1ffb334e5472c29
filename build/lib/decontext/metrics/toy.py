"""Toy-world metrics, for runs whose editor is the embedded toy editor (run.json ``"model": "toy"`` or a toy version such as ``"toy-v1"``).

The toy world's attribute reader (``decontext.toy.reader``) reads the four identity attributes (skin,
eyes, hair colour, hair style) and the edit state from a 64x64 render.

- ``toy_identity``: share of the source's four identity attributes recovered in the edit.
  Direction: *lower* = better protection (the editor no longer carries the person over).
- ``edit_success``: 1 when the requested edit is visible in the output, else 0 (the prompt's pool
  category names the edit). Direction: none; it says whether the editor still did what it was asked.
"""

from __future__ import annotations

from decontext.metrics.base import EvalOptions, MetricBackend, MetricSpec, register
from decontext.metrics.run import EditRecord, RunData


def _is_toy(info) -> bool:
    from decontext.toy.names import is_toy_model

    return is_toy_model(info.model)


@register("toy", applies=_is_toy, order=5)
class ToyBackend(MetricBackend):
    metrics = (
        MetricSpec("toy_identity", "lower", "edit", "share of the source's 4 identity attributes the reader finds in the edit; lower = better protection"),
        MetricSpec("edit_success", "none", "edit", "1 if the requested edit is visible in the output"),
    )

    def __init__(self, options: EvalOptions | None = None, reader=None) -> None:
        super().__init__(options)
        self.reader = reader
        self._source_reads: dict[str, dict] = {}

    def load(self) -> None:
        if self.reader is None:
            try:
                from decontext.toy.reader import ToyReader

                self.reader = ToyReader.load()
            except Exception as exc:
                self._unavailable(f"toy attribute reader not loadable ({type(exc).__name__}: {exc}); bash scripts/train_toy_editor.sh makes it")
                return
            from decontext.toy.model import READER_DIR

            self.source = f"the toy world's attribute reader {READER_DIR} (a small CNN trained on the toy renders, docs/TOY.md)"
        self._ok()

    def _reads(self, image) -> dict:
        return {key: values[0] for key, values in self.reader.read([image]).items()}

    def score_edit(self, edit: EditRecord, run: RunData) -> dict[str, float]:
        from decontext.toy.reader import edit_name, score_reads

        source = run.source_path(edit.stem)
        if source is None:
            return {}
        key = str(source)
        if key not in self._source_reads:
            self._source_reads[key] = self._reads(run.image(source))
        wanted = None
        for text in (edit.category, edit.prompt):  # the pool category names the edit; else the prompt's words
            try:
                wanted = edit_name(text)
                break
            except ValueError:
                continue
        scores = score_reads(self._source_reads[key], self._reads(run.image(edit.output)), wanted or "hat")
        if wanted is None:  # identity is still defined; success is not, for an edit the world does not know
            scores.pop("edit_success")
        return scores
