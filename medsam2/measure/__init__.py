"""Clinical measurements from masks: pure functions of masks and pixel spacing (no model, no files)."""
