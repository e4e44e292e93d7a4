"""The worker: takes jobs from the Redis queue and runs them in ComfyUI.

- ``runner``: the Worker (queue consumer, ComfyUI's queue kept topped up, outcomes).
- ``main``: ``comfygram worker``.
- ``workflow``: the preset's workflow for one attempt; ``failures``: what to do when it fails.
- ``gpu_lock``: one worker per ComfyUI; ``messages``: what the user sees in Telegram.
"""
