"""The nightly report (one HTML page, a section per domain) and the demo summary."""
