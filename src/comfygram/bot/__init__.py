"""The Telegram bot: the user's journey, talking to the backend over HTTP only."""
