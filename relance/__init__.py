"""relance: push notifications that resend themselves, stage by stage, to whoever did not act."""
