"""`attnscope tui`: a Textual app to browse layers, heads and tokens while the model runs."""
