"""Push providers behind one interface; the simulator is the first."""

from activities.providers.base import OutboundMessage, Provider, ProviderError, SendOutcome
from activities.providers.simulator import SimulatorProvider

__all__ = ["OutboundMessage", "Provider", "ProviderError", "SendOutcome", "SimulatorProvider"]
