"""Sources of EMG: live LSL inlets, recorded files, and the simulated participant.

Every source implements :class:`acquisition.base.Source`: ``async with source:`` then ``async for chunk in
source``. The rest of the pipeline cannot tell them apart.
"""
