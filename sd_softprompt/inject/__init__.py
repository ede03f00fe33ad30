"""Into a pipeline and out again: the tokens and rows a soft prompt adds, the checks before, the loader."""
