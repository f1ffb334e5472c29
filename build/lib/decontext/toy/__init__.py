"""The embedded toy editor: a procedural world of drawn faces (``world``), a tiny FLUX.1-Kontext
really trained to edit them in context (``model``, ``train``; weights in data/toy_editor), an attribute
reader that scores identity kept and edit success (``reader``; weights in data/toy_reader) and the
held-out evaluation (``evaluate``). See docs/TOY.md.
"""
