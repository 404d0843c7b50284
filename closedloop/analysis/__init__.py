"""Offline analyses of recorded evoked responses (neuromuscular assessment).

Each analysis is a module of its own, imported explicitly (nothing is imported here), e.g.
:mod:`closedloop.analysis.recruitment`: M-wave and H-reflex recruitment curves from sweeps of evoked
responses (Boltzmann fit with confidence intervals, automatic response windows, plots).
"""
