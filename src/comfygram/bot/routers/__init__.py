"""One router per feature. Each module's ``create_router()`` makes a fresh router: an aiogram
router can belong to one dispatcher only, and tests build several."""
