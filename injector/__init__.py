"""Process discovery, runtime detection and live attach (`rasp-attach`)."""
