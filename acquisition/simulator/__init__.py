"""The simulated participant: a virtual muscle with EMG, M-waves, artifacts, force and fatigue."""
