"""The embedded toy editor: procedural worlds of drawn faces (``world``: identity is mostly colour;
``world3``: identity is shape; ``worlds`` picks one by name), tiny FLUX.1-Kontext editors really
trained to edit them in context (``model``; weights in data/toy_editor*), attribute readers that score
identity kept and edit success (``reader``; weights in data/toy_reader and data/toy_reader_v3) and
the held-out evaluation (``evaluate``). See docs/TOY.md.
"""
