"""Rampart probes (one subpackage per runtime) and the wire protocol they share."""
