"""Where a pipeline comes from: a hub id, a folder, a built-in model by name; the tiny pipelines built in code."""
