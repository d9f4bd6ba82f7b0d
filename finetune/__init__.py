"""Fine-tuning studio: a Gradio + FastAPI front end over the Hugging Face Trainer."""

__version__ = "0.1.0"
