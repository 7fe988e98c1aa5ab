"""Thin user-facing surfaces over ``dlr_hf.engine.evaluate``: CLI, Trainer callback, plots, app."""
