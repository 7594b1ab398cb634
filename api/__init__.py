"""The FastAPI layer: EngageLab-compatible push API, status events in, journeys queried."""
