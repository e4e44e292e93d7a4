"""comfygram: a paid AI photo-editing service on Telegram, rendered by ComfyUI."""

__version__ = "0.1.0"
