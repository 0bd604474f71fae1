"""NumPy/PIL readers of the evaluation datasets kept in their own folder layouts (VOC, DAVIS)."""
