"""Rich renderables for what attnscope shows: heatmaps and report tables (shared by CLI and TUI)."""
