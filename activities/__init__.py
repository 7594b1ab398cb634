"""Every side effect a journey asks for: sending through providers, ledger reads and writes."""
