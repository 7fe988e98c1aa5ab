"""The D_LR Gradio app (Hugging Face Space entry point): ``python app.py``.

Thin: the app is built by ``dlr_hf.surfaces.app.build_demo`` from the same ``dlr_hf`` API as
the CLI. Gradio reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT from the environment; the caps and
paths the app reads (DLR_HF_MAX_SAMPLES, DLR_HF_HISTORY_DB, …) are listed in that module.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from dlr_hf.surfaces.app import build_demo, launch_options  # noqa: E402

demo = build_demo()

if __name__ == "__main__":
    demo.launch(**launch_options())
