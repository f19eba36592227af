"""The shared engine every tab calls: registry, loading, generation, chat
formatting, classification and stand-ins. No UI code lives here."""
