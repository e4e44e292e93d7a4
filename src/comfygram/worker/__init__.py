"""The worker: takes jobs from the Redis queue and runs them in ComfyUI."""
