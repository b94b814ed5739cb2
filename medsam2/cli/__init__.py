"""Command-line front end (`medsam2 ...`)."""
