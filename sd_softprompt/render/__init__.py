"""Pictures: one image, labelled prompt x seed grids, and scorers that compare them with a reference."""
