"""The language model's side: loading (models, model_presets, hub, gguf_convert), the hook sites
(hooks), what is read (capture, general_text), what is added (steering) and generation
(generation, generation_loop).

Why one package: all of them work on the model itself, and hooks is the only module that
knows where transformers keeps a decoder layer's residual stream, so a new architecture is
taught here alone.
Not named ``models``: ``common/modeling/models.py`` is the loader, and a package cannot share
its name with a module.
"""
