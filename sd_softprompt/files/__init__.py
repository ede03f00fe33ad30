"""Soft prompts on disk: the `SoftPrompt` type, safe reading, each tool's layouts, LoRA bundles, and mixing."""
