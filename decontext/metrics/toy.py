"""Toy-world metrics, for runs whose editor is the embedded toy editor (run.json ``"model": "toy"`` or a toy
version such as ``"toy-v1"``).

The toy world's attribute reader (``decontext.toy.reader``) reads the four identity attributes (world
v1: skin, eyes, hair colour, hair style; world v3: face, hair, eyes and nose shape) and the edit state
from a 64x64 render. Each run is read by the reader of its own toy editor (the one its
decontext_toy.json names), so a v3 editor's run is measured in v3's attributes.

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
        MetricSpec(
            "toy_identity",
            "lower",
            "edit",
            "share of the source's 4 identity attributes the reader finds in the edit; lower = better protection",
        ),
        MetricSpec("edit_success", "none", "edit", "1 if the requested edit is visible in the output"),
    )

    def __init__(self, options: EvalOptions | None = None, reader=None) -> None:
        super().__init__(options)
        self.reader = reader  # given: used for every run; else each run's editor's own reader
        self._readers: dict[str, object] = {}
        self._source_reads: dict[tuple[str, str], dict] = {}

    def load(self) -> None:
        if self.reader is None:
            try:
                from decontext.toy.reader import ToyReader

                self._readers["toy"] = ToyReader.for_editor("toy")
            except Exception as exc:
                self._unavailable(
                    f"toy attribute reader not loadable ({type(exc).__name__}: {exc}); "
                    "bash scripts/train_toy_editor.sh makes it"
                )
                return
            from decontext.toy.names import toy_reader_dir

            self.source = (
                f"the attribute reader of each run's toy editor ({toy_reader_dir('toy')} for the default; "
                "a small CNN trained on the toy renders, docs/TOY.md)"
            )
        self._ok()

    def _reader_for(self, run: RunData):
        if self.reader is not None:
            return self.reader
        model = run.info.model
        if model not in self._readers:
            from decontext.toy.reader import ToyReader

            self._readers[model] = ToyReader.for_editor(model)
        return self._readers[model]

    def _reads(self, reader, image) -> dict:
        return {key: values[0] for key, values in reader.read([image]).items()}

    def score_edit(self, edit: EditRecord, run: RunData) -> dict[str, float]:
        from decontext.toy.reader import edit_name, score_reads

        source = run.source_path(edit.stem)
        if source is None:
            return {}
        reader = self._reader_for(run)
        key = (reader.world_name, str(source))
        if key not in self._source_reads:
            self._source_reads[key] = self._reads(reader, run.image(source))
        wanted = None
        for text in (edit.category, edit.prompt):  # the pool category names the edit; else the prompt's words
            try:
                wanted = edit_name(text)
                break
            except ValueError:
                continue
        scores = score_reads(
            self._source_reads[key], self._reads(reader, run.image(edit.output)), wanted or "hat", reader.attributes
        )
        if wanted is None:  # identity is still defined; success is not, for an edit the world does not know
            scores.pop("edit_success")
        return scores
