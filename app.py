"""Fine-tuning studio: one server, one port.

Run it:      python app.py            (serves on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT)
Or:          uvicorn app:app --port 7860

The REST routes (/api/*, /dashboard, /healthz) are registered before the
Gradio UI is mounted at "/": routes declared after a root mount are shadowed.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from finetune.server import create_app  # noqa: E402
from finetune.settings import get_settings  # noqa: E402

app = create_app()

if __name__ == "__main__":
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    # One worker: job state lives in this process.
    uvicorn.run(app, host=settings.server_name, port=settings.server_port, workers=1)
